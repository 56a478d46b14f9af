"""Shared fixtures: the embedded tiny model (loaded once per session) and an empty feedback store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # the suite runs in two processes (pyproject: -n 2) on CI's two cores: one torch thread each
    os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "models" / "llava-tiny"


# The longest modules (minutes each on 2 cores) start first, so the two test processes end together.
LONGEST_FIRST = ("test_tiny_build", "test_bench", "test_conflicts_e2e", "test_group_recovery", "test_group_learning",
                 "test_teaching_e2e", "test_group_start", "test_tiny_model")


def pytest_collection_modifyitems(items):
    """Browser and end-to-end tests are slow too, so `pytest -m "not slow"` leaves them out; the
    longest modules run first (the same order in every process, as pytest-xdist needs)."""
    for item in items:
        if item.get_closest_marker("browser") or item.get_closest_marker("e2e"):
            item.add_marker(pytest.mark.slow)
    rank = {name: k for k, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.module.__name__.rsplit(".", 1)[-1], len(rank)))


@pytest.fixture(scope="session")
def tiny():
    """The committed tiny LLaVA, loaded through llaca.model.llava (fp32, CPU)."""
    from llaca.model.llava import load_model

    if not (TINY / "config.json").exists():
        pytest.fail(f"the embedded model is missing at {TINY}; run: python -m llaca.world build --out {TINY}")
    return load_model(TINY, device="cpu")


@pytest.fixture
def store(tmp_path: Path):
    """An empty feedback store in a temporary data dir, closed afterwards."""
    from feedback_store import FeedbackStore

    s = FeedbackStore(tmp_path / "data")
    yield s
    s.close()
