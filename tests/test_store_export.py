"""Export of what users taught: the LLaVA-format folder (``llaca.export``) and the store's
JSONL export, through the API and the command lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from feedback_store import ExportError
from feedback_store.export import export_jsonl
from llaca.export import export_llava
from llaca.learn.dataset import read_folder
from tests.store_helpers import REPO_ROOT, ask, png_bytes


@pytest.fixture
def taught(store):
    """Alice: two corrections (one with an image), promoted. Bob: one, still open."""
    alice, bob = store.start_session(user="alice"), store.start_session(user="bob")
    store.register_adapter("v1", None, store.data_dir / "adapters" / "v1", "llaca", {}, {})
    q1, a1 = ask(store, alice, "What colour?", "green", image=png_bytes((255, 0, 0)), adapter_version="v1")
    _, a2 = ask(store, alice, "And the shape?", "circle", parent_id=a1.id)
    _, a3 = ask(store, alice, "Say hi", "bye")  # no image in this conversation
    store.record_feedback(alice.id, a1.id, "dislike")
    store.add_correction(alice.id, a1.id, "red")
    store.add_correction(alice.id, a2.id, "square")
    store.add_correction(alice.id, a3.id, "hi")
    buffer = store.mark_ready(alice.id)
    store.claim_ready_buffer("w", 60)
    store.finish_claim(buffer.id, "w", "promoted", adapter_version="v1")
    qb, ab = ask(store, bob, "Which side?", "left", image=png_bytes((0, 0, 255)))
    store.add_correction(bob.id, ab.id, "right")
    return {"store": store, "alice": alice, "bob": bob, "sha_red": q1.image_sha256,
            "sha_blue": qb.image_sha256, "answers": (a1, a2, a3, ab)}


def run_cli(*args: str, env: dict | None = None, module: str = "feedback_store") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO_ROOT, capture_output=True,
        text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})},
    )


def test_llava_export_writes_data_json_and_images(taught, tmp_path):
    store, out = taught["store"], tmp_path / "out"
    summary = export_llava(store, out)
    assert (summary.records, summary.images, summary.skipped) == (3, 3, 1)  # "Say hi" has no image
    data = json.loads((out / "data.json").read_text())
    assert [d["conversations"] for d in data] == [
        [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "red"}],
        [{"from": "human", "value": "<image>\nAnd the shape?"}, {"from": "gpt", "value": "square"}],
        [{"from": "human", "value": "<image>\nWhich side?"}, {"from": "gpt", "value": "right"}],
    ]
    assert len({d["id"] for d in data}) == 3 and [d["image"] for d in data] == [f"images/{d['id']}.png" for d in data]
    provenance = {p["id"]: p for p in json.loads((out / "provenance.json").read_text())}
    shas = [provenance[d["id"]]["image_sha256"] for d in data]
    assert shas == [taught["sha_red"], taught["sha_red"], taught["sha_blue"]]
    for d, sha in zip(data, shas):  # the stored image's pixels
        assert pixels(out / d["image"]) == pixels(store.image_path(sha))
    first = provenance[data[0]["id"]]
    a1 = taught["answers"][0]
    assert (first["message_id"], first["previous_answer"], first["answer_adapter_version"]) == (a1.id, "green", "v1")
    assert (first["session_id"], first["buffer_status"]) == (taught["alice"].id, "promoted")


def pixels(path) -> bytes:
    with Image.open(path) as im:
        return im.convert("RGB").tobytes()


def test_llava_export_is_readable_by_the_projects_dataset_reader(taught, tmp_path):
    export_llava(taught["store"], tmp_path / "out")
    samples = read_folder(tmp_path / "out")
    assert [(s.turns, s.image.size) for s in samples] == [
        ([("What colour?", "red")], (32, 24)), ([("And the shape?", "square")], (32, 24)),
        ([("Which side?", "right")], (32, 24)),
    ]


def test_llava_export_filters(taught, tmp_path):
    store = taught["store"]
    by_session = export_llava(store, tmp_path / "bob", session_id=taught["bob"].id)
    assert by_session.records == 1 and by_session.images == 1
    trained = export_llava(store, tmp_path / "promoted", status="promoted")
    data = json.loads((tmp_path / "promoted" / "data.json").read_text())
    assert trained.records == 2 and [d["conversations"][1]["value"] for d in data] == ["red", "square"]
    images = sorted((tmp_path / "promoted" / "images").iterdir())
    assert [p.name for p in images] == sorted(f"{d['id']}.png" for d in data)
    assert {pixels(p) for p in images} == {pixels(store.image_path(taught["sha_red"]))}
    assert export_llava(store, tmp_path / "none", status="rejected").records == 0


def test_export_refuses_a_non_empty_or_store_folder(taught, tmp_path):
    store, out = taught["store"], tmp_path / "out"
    export_llava(store, out)
    with pytest.raises(ExportError, match="already exists and is not empty") as full:
        export_llava(store, out)
    assert (full.value.path, full.value.reason) == (out, "not_empty")
    assert export_llava(store, out, overwrite=True).records == 3
    with pytest.raises(ExportError, match="inside the store's data dir") as inside:
        export_llava(store, store.data_dir / "images" / "x")
    assert inside.value.reason == "inside_store" and not (store.data_dir / "images" / "x").exists()


def test_jsonl_export_has_every_message_and_feedback_row(taught, tmp_path):
    store = taught["store"]
    summary = export_jsonl(store, tmp_path / "j")
    messages = [json.loads(line) for line in (tmp_path / "j" / "messages.jsonl").read_text().splitlines()]
    feedback = [json.loads(line) for line in (tmp_path / "j" / "feedback.jsonl").read_text().splitlines()]
    assert (summary.records, summary.feedback, summary.images) == (8, 5, 2)
    assert len(messages) == 8 and len(feedback) == 5
    a1 = taught["answers"][0]
    row = next(m for m in messages if m["id"] == a1.id)
    assert (row["role"], row["text"], row["adapter_version"], row["gen_params"]) == ("assistant", "green", "v1", {"temperature": 0.0})
    assert row["created_at"].endswith("+00:00")
    assert [f["kind"] for f in feedback if f["message_id"] == a1.id] == ["dislike", "correction"]
    with_image = [m for m in messages if m["image"]]
    assert all((tmp_path / "j" / m["image"]).is_file() for m in with_image) and len(with_image) == 2
    only_bob = export_jsonl(store, tmp_path / "b", session_id=taught["bob"].id)
    assert (only_bob.records, only_bob.feedback) == (2, 1)


@pytest.mark.slow  # over ~10 s on 2 cores
def test_cli_export_and_check(taught, tmp_path):
    store = taught["store"]
    data_dir = str(store.data_dir)
    done = run_cli("--data-dir", data_dir, "--out", str(tmp_path / "cli"), "--status", "promoted", module="llaca.export")
    assert done.returncode == 0, done.stderr
    assert "wrote 2 corrections and 2 images to" in done.stdout and "left out 1 correction without" in done.stdout
    assert len(json.loads((tmp_path / "cli" / "data.json").read_text())) == 2
    # llaca.export takes its data folder from Settings, so LLACA_DATA_DIR works as for the app
    done = run_cli("--out", str(tmp_path / "env"), module="llaca.export", env={"LLACA_DATA_DIR": data_dir})
    assert done.returncode == 0 and "wrote 3 corrections" in done.stdout, done.stderr
    # the store's own export is JSONL; it reads no environment variable
    done = run_cli("export", "--data-dir", data_dir, "--out", str(tmp_path / "j"))
    assert done.returncode == 0, done.stderr
    assert "wrote 8 messages, 5 feedback rows" in done.stdout
    # --out FILE.jsonl writes that one file (the README's command), not a folder of that name
    done = run_cli("export", "--data-dir", data_dir, "--out", str(tmp_path / "all.jsonl"))
    assert done.returncode == 0, done.stderr
    assert "wrote 8 messages, 5 feedback rows to" in done.stdout and (tmp_path / "all.jsonl").is_file()
    rows = [json.loads(line) for line in (tmp_path / "all.jsonl").read_text().splitlines()]
    assert [r["record"] for r in rows] == ["message"] * 8 + ["feedback"] * 5
    assert all((store.data_dir / r["image"]).is_file() for r in rows if r.get("image"))  # relative to the data dir
    done = run_cli("export", "--data-dir", data_dir, "--out", str(tmp_path / "all.jsonl"))
    assert done.returncode == 2 and "already exists. Choose a new one or pass --force" in done.stderr
    done = run_cli("--data-dir", data_dir, "--out", str(tmp_path / "c.jsonl"), module="llaca.export")
    assert done.returncode == 2 and "writes JSONL" in done.stderr and not (tmp_path / "c.jsonl").exists()
    done = run_cli("export", "--data-dir", data_dir, "--out", str(tmp_path / "x"), "--status", "promoted")
    assert done.returncode == 2 and "unrecognized arguments: --status" in done.stderr
    done = run_cli("--data-dir", data_dir, "--out", str(tmp_path / "cli"), module="llaca.export")
    assert done.returncode == 2 and "is not empty. Choose a new one or pass --force" in done.stderr
    for module in ("feedback_store", "llaca.export"):
        args = ("export",) if module == "feedback_store" else ()
        done = run_cli(*args, "--data-dir", str(tmp_path / "nothing"), "--out", str(tmp_path / "y"), module=module)
        assert done.returncode == 2 and "no feedback store" in done.stderr
        assert not (tmp_path / "nothing").exists() and not (tmp_path / "y").exists()
    done = run_cli("check", "--data-dir", data_dir)
    assert done.returncode == 0 and "integrity: ok" in done.stdout
