"""The training command line: a LLaVA-format folder -> a LoRA adapter, in one process or many.

    python -m llaca.tune --data DIR [--replay DIR] [--init-adapter DIR] --method llaca --out DIR
    accelerate launch --num_processes 4 -m llaca.tune --data DIR --method llaca --out DIR ...

Runs `llaca.learn.tuner.tune` unchanged under `python` and under `accelerate launch` (one process per
GPU, plain DDP): every process loads the model onto its own device, trains on its shard of
each global batch of `--batch-size`, and only the main process writes the adapter and
`run_record.json`. The record states the number of processes, the global batch and, per
process, digests of its final θ* and of its α statistics (they agree when the all-reduce
works). On a machine without GPUs, `accelerate launch --multi_gpu --num_processes 2` starts
two CPU processes over gloo (accelerate 1.15's `--cpu` starts one process unless it has mpirun).

This module owns the mapping between `TuneConfig` and command-line flags, both ways: the
flags are generated from the dataclass, and `command_args` writes a config back as flags,
which is how the learning worker runs a configured training command (`run_command`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, Sequence

from llaca.config.methods import TUNER_METHODS
from llaca.config.settings import Settings, SettingsError, add_flags
from llaca.learn.dataset import VQASample, read_folder, write_folder
from llaca.learn.tuner import TuneConfig, TuneResult, TuningError

log = logging.getLogger(__name__)

PROGRESS_PREFIX = "llaca-progress "
"""Lines of stdout that start with this carry a JSON {step, total, loss} (with --progress)."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _optional_int(text: str) -> int | None:
    return None if text.lower() in ("none", "") else int(text)


def add_config_flags(ap: argparse.ArgumentParser) -> None:
    """One flag per `TuneConfig` field (the field's name with dashes), defaulting to the field's default."""
    group = ap.add_argument_group("tuner options (llaca.learn.tuner.TuneConfig)")
    for f in dataclasses.fields(TuneConfig):
        if f.name == "method":
            continue  # its own flag below, with the choices
        default = f.default
        if isinstance(default, bool):
            group.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, default=default,
                               help=f.metadata["help"])
        elif f.name == "steps":
            group.add_argument(_flag(f.name), type=_optional_int, default=default,
                               help=f"optimizer steps; 'none' lets --epochs decide (default {default})")
        else:
            group.add_argument(_flag(f.name), type=type(default), default=default,
                               help=f"{f.metadata['help']} (default {default})".replace("%", "%%"))


def config_from_args(args: argparse.Namespace) -> TuneConfig:
    return TuneConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TuneConfig)})


def command_args(cfg: TuneConfig) -> list[str]:
    """`cfg` as flags of this command (fields at their default are left out)."""
    out = ["--method", cfg.method]
    for f in dataclasses.fields(TuneConfig):
        value = getattr(cfg, f.name)
        if f.name == "method" or value == f.default:
            continue
        if isinstance(f.default, bool):
            out.append(_flag(f.name) if value else "--no-" + f.name.replace("_", "-"))
        else:
            out += [_flag(f.name), "none" if value is None else str(value)]
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m llaca.tune", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="LLaVA-format folder of the samples to learn")
    ap.add_argument("--out", type=Path, required=True, help="where the adapter and run_record.json are written")
    ap.add_argument("--method", choices=TUNER_METHODS, default=TuneConfig.method)
    ap.add_argument("--init-adapter", type=Path, default=None, help="peft adapter folder to continue from")
    ap.add_argument("--replay", type=Path, default=None, help="LLaVA-format folder of earlier tasks (+replay methods)")
    add_flags(ap, ("model", "log_level"))  # shared with the app and the worker (llaca.config)
    ap.add_argument("--progress", action="store_true",
                    help=f"print '{PROGRESS_PREFIX}{{json}}' lines to stdout (main process) for a supervising worker")
    ap.add_argument("--trace-dir", type=Path, default=None,
                    help="each process writes rank<N>.json here: its shard's sample ids per micro-batch and digests")
    add_config_flags(ap)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_namespace(args)
    except SettingsError as e:
        print(f"llaca.tune: error: {e}", file=sys.stderr)
        return 2
    settings.configure_logging("WARNING", fmt="%(asctime)s %(name)s: %(message)s")
    import torch
    from accelerate import PartialState

    from llaca.learn.tuner import tune
    from llaca.model.llava import ModelLoadError, load_model

    # the process group, when launched by accelerate; without a GPU, accelerate only sets up
    # gloo when told cpu=True (else each process would train alone, on its shard)
    state = PartialState(cpu=not torch.cuda.is_available())
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if state.num_processes != launched:
        print(f"llaca.tune: error: launched as {launched} processes, but accelerate set up "
              f"{state.num_processes} ({state.distributed_type})", file=sys.stderr)
        return 2
    try:
        cfg = config_from_args(args)
        samples = read_folder(args.data)
        replay = read_folder(args.replay) if args.replay else []
        lm = load_model(settings.model, device=str(state.device))
        progress = None
        if args.progress and state.is_main_process:
            def progress(step: int, total: int, loss: float) -> None:
                print(PROGRESS_PREFIX + json.dumps({"step": step, "total": total, "loss": round(loss, 5)}), flush=True)
        result = tune(lm.model, lm.processor, samples, cfg, init_adapter=args.init_adapter, out_dir=args.out,
                      replay=replay, progress=progress)
    except (TuningError, ModelLoadError, ValueError, OSError) as e:
        print(f"llaca.tune: error (process {state.process_index}): {e}", file=sys.stderr)
        return 2
    if args.trace_dir is not None:
        args.trace_dir.mkdir(parents=True, exist_ok=True)
        (args.trace_dir / f"rank{state.process_index}.json").write_text(json.dumps(result.rank_trace))
    state.wait_for_everyone()
    state.destroy_process_group()
    return 0


# -- the learning worker's side: run a configured command as a subprocess -------------------------

class TrainingCommandError(TuningError):
    """The configured training command failed or produced no adapter; the message has its log tail."""


def run_command(command: str, samples: Sequence[VQASample], cfg: TuneConfig, *, model: str, out_dir: Path,
                work_dir: Path, init_adapter: Path | None = None, replay: Sequence[VQASample] = (),
                progress: Callable[[int, int, float], None] | None = None,
                env: dict[str, str] | None = None) -> TuneResult:
    """Write the samples as LLaVA-format folders in `work_dir`, run `command` (e.g.
    `accelerate launch --num_processes 4 -m llaca.tune`) with this module's flags appended,
    and return the adapter it wrote to `out_dir` with its run record.

    `progress` is called for every progress line; if it raises (the worker lost its lease),
    the command is terminated and the exception propagates.
    """
    work_dir = Path(work_dir)
    write_folder(list(samples), work_dir / "train")
    argv = shlex.split(command) + ["--data", str(work_dir / "train"), "--out", str(out_dir), "--model", model,
                                   "--progress", *command_args(cfg)]
    if init_adapter is not None:
        argv += ["--init-adapter", str(init_adapter)]
    if replay:
        write_folder(list(replay), work_dir / "replay")
        argv += ["--replay", str(work_dir / "replay")]
    root = str(Path(__file__).resolve().parents[1])  # so `-m llaca.tune` resolves from any cwd
    run_env = {**os.environ, **(env or {})}
    run_env["PYTHONPATH"] = os.pathsep.join(p for p in (root, run_env.get("PYTHONPATH")) if p)
    log_path = work_dir / "train.log"
    log.info("training command: %s", shlex.join(argv))
    with open(log_path, "w") as log_file:
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log_file, text=True, env=run_env)
        except OSError as e:
            raise TrainingCommandError(f"cannot run the training command {command!r}: {e}") from e
        failure: list[BaseException] = []

        def follow() -> None:  # reads progress lines until the command closes stdout
            for line in proc.stdout:
                if failure or not line.startswith(PROGRESS_PREFIX) or progress is None:
                    continue
                try:
                    p = json.loads(line[len(PROGRESS_PREFIX):])
                    progress(p["step"], p["total"], p["loss"])
                except BaseException as e:  # noqa: BLE001 (handed to the caller's thread)
                    failure.append(e)
                    proc.terminate()

        reader = threading.Thread(target=follow, name="tune-progress", daemon=True)
        reader.start()
        try:
            rc = proc.wait()
        except BaseException:
            proc.kill()
            raise
        finally:
            reader.join(timeout=10)
    if failure:
        raise failure[0]
    record_path = Path(out_dir) / "run_record.json"
    if rc != 0 or not record_path.is_file():
        tail = log_path.read_text(errors="replace")[-2000:]
        raise TrainingCommandError(f"the training command exited with status {rc}"
                                   f"{'' if rc else ' without writing an adapter'}: {shlex.join(argv)}\n{tail}")
    return TuneResult(Path(out_dir), json.loads(record_path.read_text()))
