"""LLaVA-format folders: round trip, the export CLI, and clear errors on bad folders."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from llaca.learn.dataset import DatasetFormatError, VQASample, read_folder, write_folder
from llaca.world.heldout import heldout
from tests.conftest import ROOT


def test_round_trip_keeps_images_and_turns(tmp_path):
    samples = heldout("choice", 5, seed=1)
    samples.append(VQASample("multi", samples[0].image, [("What color is the shape?", "red"), ("And?", "blue")], "x"))
    write_folder(samples, tmp_path / "ds")
    records = json.loads((tmp_path / "ds" / "data.json").read_text())
    assert records[0]["conversations"][0]["value"].startswith("<image>\nWhat color is the")
    assert records[0]["conversations"][1]["from"] == "gpt"
    back = read_folder(tmp_path / "ds")
    assert [b.turns for b in back] == [s.turns for s in samples]
    assert back[0].image.tobytes() == samples[0].image.tobytes()


@pytest.mark.slow  # over ~10 s on 2 cores
def test_export_cli_writes_a_llava_folder(tmp_path):
    out = tmp_path / "count"
    r = subprocess.run(
        [sys.executable, "-m", "llaca.world", "export", "--family", "count", "--n", "12", "--seed", "1", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    samples = read_folder(out)
    assert len(samples) == 12 and all(s.question == "How many shapes are there?" for s in samples)
    assert len(list((out / "images").glob("*.png"))) == 12


def test_bad_folders_say_what_is_wrong(tmp_path):
    with pytest.raises(DatasetFormatError, match="data.json"):
        read_folder(tmp_path)
    (tmp_path / "data.json").write_text('[{"id": 1, "image": "images/missing.png", "conversations": []}]')
    with pytest.raises(DatasetFormatError, match="cannot read image"):
        read_folder(tmp_path)
    (tmp_path / "data.json").write_text("{not json")
    with pytest.raises(DatasetFormatError, match="not valid JSON"):
        read_folder(tmp_path)


def test_repeated_sample_ids_are_refused_before_anything_is_written(tmp_path):
    """Ids name the image files: a repeat would silently pair one image with two answers."""
    a, b = heldout("count", 2, seed=3)
    b.id = a.id
    with pytest.raises(DatasetFormatError, match=f"repeated: {a.id}"):
        write_folder([a, b], tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_bench_names_a_task_after_its_folder_also_when_given_its_data_json(tmp_path):
    from llaca.bench.cli import folder_tasks

    for name in ("count", "letter"):
        write_folder(heldout(name, 6, seed=2), tmp_path / name)
    tasks = folder_tasks([tmp_path / "count" / "data.json", tmp_path / "letter"], None, 2, seed=0)
    assert [t.name for t in tasks] == ["count", "letter"]
    with pytest.raises(SystemExit, match="distinct names"):
        folder_tasks([tmp_path / "count", tmp_path / "count" / "data.json"], None, 2, seed=0)


def test_a_lazy_iterable_with_a_repeated_id_never_gets_a_data_json(tmp_path):
    a, b = heldout("count", 2, seed=3)
    b.id = a.id
    with pytest.raises(DatasetFormatError, match=f"repeated: {a.id}"):
        write_folder(iter([a, b]), tmp_path / "ds")
    assert not (tmp_path / "ds" / "data.json").exists()
