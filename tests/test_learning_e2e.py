"""The whole loop on the real app: corrections through the API -> worker -> guard -> hot swap."""

from __future__ import annotations

import time

import pytest

from app.server import AppServer
from llaca.evaluate import is_correct
from llaca.world.heldout import heldout
from tests.conftest import TINY


def files(tmp_path, family, n, seed):
    from gradio_client import handle_file

    out = []
    for k, s in enumerate(heldout(family, n, seed=seed)):
        path = tmp_path / f"{family}-{seed}-{k}.png"
        s.image.save(path)
        out.append((handle_file(str(path)), s.question, s.answer))
    return out


def served_accuracy(client, tmp_path, family, n, seed) -> tuple[float, set]:
    hits, versions = 0, set()
    for image, q, a in files(tmp_path, family, n, seed):
        got, _, version = client.predict(image, q, 0.0, 0.7, 32, api_name="/ask")
        hits += is_correct(got, a)
        versions.add(version)
    return 100.0 * hits / n, versions


@pytest.mark.slow
def test_a_client_teaches_a_new_family_through_the_app(tmp_path):
    from gradio_client import Client

    args = ["--buffer-size", "48", "--learn-steps", "80", "--idle-ready", "0"]
    with AppServer(TINY, tmp_path / "data", args=args, worker=True, threads=1, timeout=180) as server:
        client = Client(server.url, verbose=False)
        base = {f: served_accuracy(client, tmp_path, f, 40, 7)[0] for f in ("color", "shape")}
        corrections, seed, buffer_id = 0, 100, None
        while corrections < 48:
            for image, q, a in files(tmp_path, "position", 16, seed):
                got, message_id, version = client.predict(image, q, 0.0, 0.7, 32, api_name="/ask")
                assert version == "base"
                if is_correct(got, a):
                    continue
                buffer_id, size, status = client.predict(message_id, a, api_name="/correct")
                corrections += 1
                assert size == corrections
                if corrections == 48:
                    assert status == "ready"
                    break
            seed += 1
        deadline = time.time() + 300
        while time.time() < deadline:
            st = client.predict(api_name="/status")
            buf = next(b for b in st["buffers"] if b["id"] == buffer_id)
            if buf["status"] in ("promoted", "rejected"):
                break
            time.sleep(1)
        assert buf["status"] == "promoted", buf
        version = buf["adapter_version"]
        assert st["current_adapter"] == version
        acc, versions = served_accuracy(client, tmp_path, "position", 40, 9999)
        assert versions == {version}  # the promoted adapter answers now
        assert acc >= 80.0
        for f in ("color", "shape"):
            after, _ = served_accuracy(client, tmp_path, f, 40, 7)
            assert after >= base[f] - 5.0, (f, base[f], after)
