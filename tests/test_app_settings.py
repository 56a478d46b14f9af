"""Settings: flags over LLACA_* variables over defaults; bad values say which setting is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from llaca.config.settings import Settings, SettingsError


def test_defaults_serve_the_tiny_model_on_localhost():
    s = Settings.from_args([], env={})
    assert (s.model, s.host, s.port) == ("models/llava-tiny", "127.0.0.1", 7860)
    assert s.data_dir == Path("data") and s.buffer_size == 8 and (s.max_batch, s.concurrency) == (8, 8)
    assert Settings.from_args(["--max-batch", "1"], env={}).concurrency == 2  # each answer alone: as before
    assert Settings.from_args(["--max-batch", "4"], env={"LLACA_CONCURRENCY": "3"}).concurrency == 3
    assert Settings.from_args([], env={"LLACA_MAX_LOADED_ADAPTERS": "3"}).max_loaded_adapters == 3
    for bad in (["--max-batch", "0"], ["--max-loaded-adapters", "0"]):
        with pytest.raises(SettingsError, match="must be"):
            Settings.from_args(bad, env={})
    assert s.admin_password is None and not s.admin_enabled and s.worker is True and s.device is None


def test_environment_then_flags():
    env = {
        "LLACA_MODEL": "llava-hf/llava-1.5-7b-hf", "LLACA_DATA_DIR": "/mnt/llaca", "LLACA_HOST": "0.0.0.0",
        "LLACA_PORT": "8000", "LLACA_ADMIN_PASSWORD": "s3cret", "LLACA_BUFFER_SIZE": "4",
        "LLACA_DEVICE": "cuda", "LLACA_CONCURRENCY": "3", "LLACA_WORKER": "0",
    }
    s = Settings.from_args([], env=env)
    assert s.model == "llava-hf/llava-1.5-7b-hf" and s.data_dir == Path("/mnt/llaca")
    assert (s.host, s.port, s.buffer_size, s.device, s.concurrency) == ("0.0.0.0", 8000, 4, "cuda", 3)
    assert s.admin_enabled and s.worker is False
    s = Settings.from_args(["--port", "9000", "--model", "m", "--buffer-size", "2", "--no-worker"], env={"LLACA_PORT": "8000"})
    assert (s.port, s.model, s.buffer_size, s.worker) == (9000, "m", 2, False)


def test_gradio_server_variables_are_a_fallback_for_spaces():
    s = Settings.from_args([], env={"GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": "7861"})
    assert (s.host, s.port) == ("0.0.0.0", 7861)
    s = Settings.from_args([], env={"GRADIO_SERVER_NAME": "0.0.0.0", "LLACA_HOST": "127.0.0.1"})
    assert s.host == "127.0.0.1"


@pytest.mark.parametrize("argv, env, words", [
    ([], {"LLACA_PORT": "http"}, "port must be an integer"),
    (["--port", "70000"], {}, "port must be between"),
    ([], {"LLACA_BUFFER_SIZE": "0"}, "buffer-size must be at least 1"),
    ([], {"LLACA_WORKER": "maybe"}, "LLACA_WORKER"),
    (["--concurrency", "0"], {}, "concurrency must be at least 1"),
    # the single-adapter methods are a setting within a group now: the error says where they went
    (["--learn-method", "llaca"], {}, "set tune-method llaca"),
    ([], {"LLACA_LEARN_METHOD": "groups"}, "learn-method must be one of llaca\\+groups"),
    ([], {"LLACA_TUNE_METHOD": "llaca+groups"}, "tune-method must be one of seq"),
])
def test_bad_values_name_the_setting(argv, env, words):
    with pytest.raises(SettingsError, match=words):
        Settings.from_args(argv, env=env)


def test_no_environment_read_at_import(monkeypatch):
    monkeypatch.setenv("LLACA_PORT", "7999")
    assert Settings.from_args([]).port == 7999  # read when called, not when imported
    monkeypatch.delenv("LLACA_PORT")
    assert Settings.from_args([]).port == 7860


def test_every_flag_names_its_variable():
    from llaca.config.settings import build_parser

    for action in build_parser()._actions:
        if action.dest != "help":
            assert "LLACA_" in (action.help or ""), f"--{action.dest.replace('_', '-')} does not name its LLACA_* variable"


def test_train_command_from_flag_or_environment():
    assert Settings.from_args([], env={}).train_command is None  # the worker trains in-process
    cmd = "accelerate launch --num_processes 4 -m llaca.tune"
    assert Settings.from_args([], env={"LLACA_TRAIN_COMMAND": cmd}).train_command == cmd
    assert Settings.from_args(["--train-command", "python -m llaca.tune"], env={"LLACA_TRAIN_COMMAND": cmd}).train_command \
        == "python -m llaca.tune"
    with pytest.raises(SettingsError, match="train-command"):
        Settings.from_args(["--train-command", "accelerate launch 'unclosed"], env={})


LEARNING_ENV = {
    "LLACA_MODEL": "some/llava", "LLACA_DATA_DIR": "/srv/llaca", "LLACA_DEVICE": "cuda:1", "LLACA_LEARN_METHOD": "llaca+groups", "LLACA_TUNE_METHOD": "seq+replay",
    "LLACA_LEARN_STEPS": "12", "LLACA_GUARD_MARGIN": "2.5", "LLACA_IDLE_READY": "60", "LLACA_WORKER_THREADS": "3",
    "LLACA_TRAIN_COMMAND": "python -m llaca.tune", "LLACA_LOG_LEVEL": "debug",
}


def test_the_in_app_worker_and_the_worker_process_read_the_same_configuration(monkeypatch):
    """The same LLACA_* variables give `python app.py`'s worker and `python -m llaca.worker` one configuration."""
    import importlib.util

    import llaca.worker.loop
    from llaca.worker.cli import config_from_args
    from tests.conftest import ROOT

    started = []

    def start_background(cfg, store, shared=None):
        started.append(cfg)
        return None, None

    monkeypatch.setattr(llaca.worker.loop, "start_background", start_background)
    spec = importlib.util.spec_from_file_location("app_entry", ROOT / "app.py")
    app_entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app_entry)
    app_entry.start_learning_worker(Settings.from_args([], env=LEARNING_ENV), store=None)
    standalone, _ = config_from_args([], env=LEARNING_ENV)
    assert started == [standalone]
    s = standalone.settings
    assert (s.model, s.data_dir, s.device, s.learn_method, s.tune_method, s.learn_steps) == (
        "some/llava", Path("/srv/llaca"), "cuda:1", "llaca+groups", "seq+replay", 12)
    assert (s.guard_margin, s.idle_ready, s.worker_threads, s.train_command, s.log_level) == (2.5, 60.0, 3, "python -m llaca.tune", "DEBUG")
    flags, _ = config_from_args(["--learn-steps", "7", "--data-dir", "d"], env=LEARNING_ENV)  # flags over variables
    assert (flags.settings.learn_steps, flags.settings.data_dir) == (7, Path("d"))


def test_only_the_settings_module_reads_llaca_variables():
    import re

    from tests.conftest import ROOT

    reads = re.compile(r"""(environ|getenv)\W*(get)?\W*["']LLACA_""")  # os.environ.get("LLACA_X"), getenv("LLACA_X")...
    files = [ROOT / "app.py", *(p for d in ("app", "llaca", "feedback_store") for p in (ROOT / d).rglob("*.py"))]
    assert [str(p.relative_to(ROOT)) for p in files if reads.search(p.read_text())] == []
    assert "env.get(name)" in (ROOT / "llaca" / "config" / "settings.py").read_text()  # Settings.from_namespace reads them all
