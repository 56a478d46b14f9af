"""benchmarks/gpu_check.py at small scale on the CPU: the same script the GPU runs at full scale.

It builds the small LLaVA-1.5-geometry model, serves four routed groups at 1, 8 and 16
concurrent streams, trains one in-app round on the shared model while serving, swaps to the
retrained version, and writes every figure; here each figure is checked to be there and sane.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # over ~10 s on 2 cores
def test_gpu_check_small_scale_on_cpu_writes_every_figure(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--scale", "small", "--device", "cpu",
         "--threads", "1", "--out", str(out)],
        check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["complete"] is True and r["scale"] == "small" and r["device"] == "cpu"
    assert "TTFT p50" in proc.stdout and str(out) in proc.stdout  # the readable summary

    m = r["model"]
    assert m["image_tokens"] == 576 and m["vision_feature_layer"] == -2
    assert m["vision"]["image_size"] == 336 and m["vision"]["patch_size"] == 14
    assert m["text"]["vocab_size"] == 32064 and m["parameters"] > 0 and m["build_seconds"] > 0
    assert r["adapters"]["groups"] == 4 and r["adapters"]["lora_r"] == 16
    assert r["serving_warmup"]["adapter_loads"] == 4

    assert set(r["serving"]) == {"1_streams", "8_streams", "16_streams"}
    for key, s in r["serving"].items():
        assert s["streams"] == int(key.split("_")[0]) and s["answers"] >= s["streams"]
        assert 0 < s["ttft_p50_s"] <= s["ttft_p95_s"], s
        assert 0 < s["first_text_p50_s"] <= s["first_text_p95_s"], s
        assert s["tokens"] > 0 and s["tokens"] <= s["tokens_expected"] and s["tokens_per_s"] > 0
        assert s["wall_seconds"] > 0
    assert len(r["serving"]["16_streams"]["answers_by_group"]) == 4  # routed over the four groups

    t = r["training"]
    assert t["method"] == "llaca+replay" and t["steps"] >= 1 and t["batch_size"] == 8 and t["lr"] == 3e-4
    assert t["samples"] == 8 and t["trainable_parameters"] > 0
    assert t["step_seconds_mean"] > 0 and t["seconds"] > 0
    assert t["ema_update_s"] > 0 and t["ema_tensors"] > 0
    assert t["served_meanwhile"]["answers"] > 0 and t["served_meanwhile"]["tokens_per_s"] > 0

    s = r["swap"]
    assert s["adapter_loaded"] == 1 and s["version"] == "v2" and s["served_version_after"] == "v2"
    assert 0 < s["adapter_load_s"] and 0 <= s["routing_swap_s"] < s["to_first_token_s"] <= s["to_first_answer_s"]

    assert r["memory_kind"] == "cpu_peak_rss_vmhwm"
    for phase in ("memory_serving", "memory_serving_plus_training"):
        assert r[phase]["peak_rss_gib"] > 0
    assert r["fits"]["fits_24gb"] is None and r["fits"]["fits_48gb"] is None  # no GPU memory on a CPU
