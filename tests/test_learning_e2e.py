"""The whole loop on the real app: corrections through the API -> worker -> guard -> hot swap."""

from __future__ import annotations

import time

import pytest

from app.server import AppServer
from llaca.learn.evaluate import is_correct
from llaca.world.heldout import heldout
from tests.conftest import TINY

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # starts the real app or process


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
def test_two_clients_teach_two_families_at_once_with_default_settings(tmp_path):
    """Default settings (instruction groups): each family gets its own adapter, questions are
    routed, every correction ends learned or pending with a reason, and the base is kept."""
    import threading

    from gradio_client import Client

    env = {"LLACA_QUESTIONS_PER_MINUTE": "100000"}  # one script asks hundreds of questions a minute
    with AppServer(TINY, tmp_path / "data", env=env, worker=True, threads=1, timeout=180) as server:
        probe = Client(server.url, verbose=False)
        base = {f: served_accuracy(probe, tmp_path, f, 30, 7)[0] for f in ("color", "shape")}
        errors: list[BaseException] = []

        def teacher(family: str, seed: int) -> None:
            try:
                client = Client(server.url, verbose=False)
                corrections = 0
                while corrections < 16:
                    for image, q, a in files(tmp_path, family, 16, seed):
                        got, message_id, _ = client.predict(image, q, 0.0, 0.7, 32, api_name="/ask")
                        if is_correct(got, a):
                            continue
                        client.predict(message_id, a, api_name="/correct")
                        corrections += 1
                        if corrections == 16:
                            break
                    seed += 1
                results[family] = client
            except BaseException as e:  # reported below
                errors.append(e)

        results: dict[str, Client] = {}
        threads = [threading.Thread(target=teacher, args=(f, s)) for f, s in (("position", 300), ("letter", 400))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not errors, errors
        deadline = time.time() + 400
        while time.time() < deadline:
            sts = {f: c.predict(api_name="/status") for f, c in results.items()}
            if all(b["status"] in ("promoted", "rejected") for st in sts.values() for b in st["buffers"]):
                break
            time.sleep(1)
        for family, st in sts.items():
            assert [b["status"] for b in st["buffers"]] == ["promoted", "promoted"], (family, st["buffers"])
            items = [i for b in st["buffers"] for i in b["items"]]
            assert len({i["group"] for i in items}) == 1, family  # one group per family
            assert all(i["status"] in ("learned", "pending") and i["status_text"] for i in items)
            assert sum(i["status"] == "learned" for i in items) >= 14, (family, items)
        groups = {family: st["buffers"][0]["items"][0]["group"] for family, st in sts.items()}
        assert groups["position"] != groups["letter"]
        acc, versions = served_accuracy(probe, tmp_path, "position", 30, 9999)
        assert acc >= 80.0 and len(versions) == 1 and versions != {"base"}
        for f in ("color", "shape"):
            after, _ = served_accuracy(probe, tmp_path, f, 30, 7)
            assert after >= base[f] - 2.0, (f, base[f], after)
