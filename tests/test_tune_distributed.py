"""`python -m llaca.tune` in one process and in two (accelerate + gloo on CPU), on the tiny model.

The two-process run must train on the same global batches as the one-process run, split
between the ranks (sharding), with gradients averaged before AdamW and the EMA (all-reduce):
then both ranks end with bitwise-equal θ* and α statistics, and the adapter agrees with the
one-process adapter up to float rounding.

Tolerance of the adapter comparison: both runs are fp32 on CPU and differ only in the order of
additions (each rank sums its half-batch's token losses, the halves are added by the
all-reduce; each shard is padded to its own width, which changes the matmul blocking). The
gradients then differ by about 3e-7 relative; after 4 AdamW + EMA steps the adapters differ
by at most 1.4e-6 (weights up to 0.09) and 2e-7 in relative Frobenius norm. The test allows
2e-5 absolute and 1e-5 relative: >10x that, and >100x below what a real fault produces (a
per-rank token mean, or accelerate's scheduler stepping N times per step, give 1e-2). The
data and seed are fixed, and no α lands within rounding of the rule's cut at α = 1 (the
fallback counts are compared, so a flip there would be reported as such).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llaca.learn.command import build_parser, command_args, config_from_args
from llaca.learn.dataset import write_folder
from llaca.learn.tuner import TuneConfig, TuningError, _batches
from llaca.world.heldout import heldout
from tests.conftest import ROOT, TINY

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # starts the real app or process

GLOBAL_BATCH = 8
STEPS = 4


def test_batches_shard_the_same_global_batches():
    samples = heldout("count", 10, seed=1)
    replay = heldout("position", 5, seed=2)
    cfg = TuneConfig(method="llaca+replay", batch_size=8, replay_fraction=0.25, seed=3)
    whole = [[s.id for s in b] for b in _batches(samples, replay, cfg, 6)]
    shards = [[[s.id for s in b] for b in _batches(samples, replay, cfg, 6, rank=r, world=4)] for r in range(4)]
    for k, batch in enumerate(whole):
        assert [shards[r][k] for r in range(4)] == [batch[r::4] for r in range(4)]
        assert sum(len(shards[r][k]) for r in range(4)) == 8
    with pytest.raises(TuningError, match="does not split over 3 processes"):
        next(_batches(samples, replay, cfg, 1, rank=0, world=3))


def test_command_line_round_trips_the_config():
    cfg = TuneConfig(method="ema", steps=None, epochs=2.5, batch_size=12, lr=3e-4, train_projector=True, seed=7)
    args = build_parser().parse_args(["--data", "d", "--out", "o", *command_args(cfg)])
    assert config_from_args(args) == cfg
    assert command_args(TuneConfig()) == ["--method", "llaca"]  # defaults are left out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tune_command(n_processes: int, data: Path, out: Path) -> list[str]:
    args = ["--data", str(data), "--out", str(out / "adapter"), "--trace-dir", str(out / "trace"),
            "--model", str(TINY), "--method", "llaca", "--steps", str(STEPS), "--batch-size", str(GLOBAL_BATCH),
            "--lr", "1e-3"]
    if n_processes == 1:
        return [sys.executable, "-m", "llaca.tune", *args]
    # accelerate 1.15: `--cpu --num_processes 2` starts ONE process unless mpirun exists;
    # `--multi_gpu` goes through torchrun, and on a machine without GPUs gives gloo on CPU.
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n_processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port()), "-m", "llaca.tune", *args]


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    from safetensors.torch import load_file

    # answers of different lengths ("3" vs "top left" vs a caption), so the shards hold
    # different numbers of answer tokens and a per-rank token mean would be wrong
    data = tmp_path / "data"
    write_folder(heldout("count", 4, seed=1) + heldout("position", 4, seed=2) + heldout("describe", 4, seed=3), data)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "HF_HUB_OFFLINE": "1"}
    runs = {n: tmp_path / f"p{n}" for n in (1, 2)}
    procs = {n: subprocess.Popen(tune_command(n, data, out), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True) for n, out in runs.items()}
    try:
        for n, proc in procs.items():  # about 20 s of CPU time in all; generous for a loaded machine
            output, _ = proc.communicate(timeout=600)
            assert proc.returncode == 0, f"{n} process(es):\n{output[-3000:]}"
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)

    one = json.loads((runs[1] / "adapter" / "run_record.json").read_text())
    two = json.loads((runs[2] / "adapter" / "run_record.json").read_text())
    assert (one["num_processes"], two["num_processes"]) == (1, 2)
    assert one["global_batch"] == two["global_batch"] == GLOBAL_BATCH and two["per_process_batch"] == GLOBAL_BATCH // 2
    assert sorted(os.listdir(runs[2] / "trace")) == ["rank0.json", "rank1.json"]
    single = json.loads((runs[1] / "trace" / "rank0.json").read_text())
    ranks = [json.loads((runs[2] / "trace" / f"rank{r}.json").read_text()) for r in range(2)]

    # sharding: each rank trained on its own half of every global batch the single process used
    assert len(single["sample_ids"]) == STEPS
    for k, batch in enumerate(single["sample_ids"]):
        assert len(batch) == GLOBAL_BATCH
        assert [ranks[0]["sample_ids"][k], ranks[1]["sample_ids"][k]] == [batch[0::2], batch[1::2]], k
    assert [r["samples_seen"] for r in two["ranks"]] == [STEPS * GLOBAL_BATCH // 2] * 2

    # all-reduce: both ranks hold bitwise the same θ* and the same α statistics
    assert ranks[0]["alpha_sum"] == ranks[1]["alpha_sum"]
    assert ranks[0]["alpha_sha256"] == ranks[1]["alpha_sha256"] and ranks[0]["params_sha256"] == ranks[1]["params_sha256"]
    assert two["ranks_agree"] and one["ranks_agree"]
    assert two["ema"]["updates"] == one["ema"]["updates"] == STEPS
    assert two["ema"]["fallback_fraction"] == one["ema"]["fallback_fraction"] < 1  # the rule itself ran
    torch.testing.assert_close(torch.tensor(ranks[0]["alpha_sum"]), torch.tensor(single["alpha_sum"]),
                               rtol=1e-5, atol=1e-5)

    # and the adapter is the one-process adapter up to float rounding (see the module docstring)
    a1 = load_file(runs[1] / "adapter" / "adapter_model.safetensors")
    a2 = load_file(runs[2] / "adapter" / "adapter_model.safetensors")
    assert a1.keys() == a2.keys() and a1
    diff = torch.cat([(a2[k] - a1[k]).flatten() for k in a1])
    ref = torch.cat([a1[k].flatten() for k in a1])
    assert diff.abs().max() <= 2e-5, float(diff.abs().max())
    assert diff.norm() <= 1e-5 * ref.norm(), float(diff.norm() / ref.norm())
    assert abs(two["loss_last"] - one["loss_last"]) <= 1e-5 * one["loss_last"]
