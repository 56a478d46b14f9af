"""A hub model that cannot be reached fails in seconds with advice, and the app does not start.

No test here contacts anything but 127.0.0.1: the "hub" is a closed port on loopback.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from app.server import ROOT, free_port
from llaca.model.llava import REAL_MODEL, ModelLoadError, hub_cache_only

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # starts the real app or process


@pytest.fixture
def closed_hub():
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


def test_unreachable_hub_and_empty_cache_fail_fast_with_advice(tmp_path, closed_hub):
    t0 = time.monotonic()
    with pytest.raises(ModelLoadError) as err:
        hub_cache_only(REAL_MODEL, endpoint=closed_hub, cache_dir=tmp_path, offline=False)
    assert time.monotonic() - t0 < 5
    text = str(err.value)
    assert "did not answer" in text and str(tmp_path) in text
    assert f"hf download {REAL_MODEL}" in text and "HF_HUB_OFFLINE=1" in text


def test_offline_needs_the_cache_and_uses_it(tmp_path, closed_hub):
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE=1 forbids downloading"):
        hub_cache_only(REAL_MODEL, endpoint=closed_hub, cache_dir=tmp_path, offline=True)
    # a cached config (the layout huggingface_hub writes) is enough to go to the cache only
    repo = tmp_path / ("models--" + REAL_MODEL.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc")
    (repo / "snapshots" / "abc").mkdir(parents=True)
    (repo / "snapshots" / "abc" / "config.json").write_text("{}")
    assert hub_cache_only(REAL_MODEL, endpoint=closed_hub, cache_dir=tmp_path, offline=True) is True
    assert hub_cache_only(REAL_MODEL, endpoint=closed_hub, cache_dir=tmp_path, offline=False, timeout=1) is True


def test_the_app_exits_at_once_and_creates_nothing(tmp_path, closed_hub):
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT=closed_hub, HF_HOME=str(tmp_path / "hf"), GRADIO_ANALYTICS_ENABLED="False")
    port = free_port()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "app.py"), "--model", REAL_MODEL, "--data-dir", str(tmp_path / "data"),
         "--port", str(port)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    # the reachability check answered (before any download and its minutes of retries)
    assert "did not answer" in proc.stderr and "HF_HUB_OFFLINE=1" in proc.stderr
    assert not (tmp_path / "data").exists()  # no store, no examples: nothing half-started
