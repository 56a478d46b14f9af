"""Helpers for the end-to-end tests that drive the real app through ``gradio_client``."""

from __future__ import annotations

from llaca.learn.evaluate import is_correct
from llaca.world.heldout import heldout

MIRROR = {"top": "bottom", "bottom": "top", "left": "right", "right": "left"}


def mirrored(answer: str) -> str:
    """A position answer with every corner mirrored (a wrong teacher's correction)."""
    return " ".join(MIRROR.get(w, w) for w in answer.split())


def files(tmp_path, family, n, seed):
    """``n`` held-out samples of ``family`` as (uploadable image, question, answer)."""
    from gradio_client import handle_file

    out = []
    for k, s in enumerate(heldout(family, n, seed=seed)):
        path = tmp_path / f"{family}-{seed}-{k}.png"
        s.image.save(path)
        out.append((handle_file(str(path)), s.question, s.answer))
    return out


def served_accuracy(client, tmp_path, family, n, seed) -> tuple[float, set]:
    """Accuracy (%) of the served system on ``n`` fresh samples, and the versions that answered."""
    hits, versions = 0, set()
    for image, q, a in files(tmp_path, family, n, seed):
        got, _, version = client.predict(image, q, 0.0, 0.7, 32, api_name="/ask")
        hits += is_correct(got, a)
        versions.add(version)
    return 100.0 * hits / n, versions


def answers(client, probe) -> list[str]:
    """Greedy answers to ``probe`` (from ``files``)."""
    return [client.predict(img, q, 0.0, 0.7, 16, api_name="/ask")[0] for img, q, _ in probe]
