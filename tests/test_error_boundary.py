"""The CLI's one error boundary (`saekit.cli.main`): expected failures are one ERROR line and exit 2, anything
else a short report and exit 1, `-v` adds the traceback; plus the faults the table cannot stage (a full
disk during collection, CUDA missing, a busy port, Streamlit missing or failing)."""

import errno
import logging
import socket
from types import SimpleNamespace

import pytest
import torch
from bad_inputs import HOOK
from safetensors import SafetensorError

from saekit import cli
from saekit.errors import ConfigError, DataError, ResourceError, as_resource_error


def error_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


def run_main(argv, caplog) -> tuple[int, logging.LogRecord]:
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="saekit"):
        code = cli.main(argv)
    (line,) = error_lines(caplog)
    return code, line


def raising(err: BaseException):
    def command(*args, **kwargs):
        raise err

    return command


# ---------------------------------------------------------------------------------------- the boundary


def test_an_unexpected_exception_is_a_short_report_and_exit_1(monkeypatch, caplog):
    monkeypatch.setattr(cli, "cmd_bench", raising(KeyError("boom\nsecond line")))
    code, line = run_main(["bench"], caplog)
    message = line.getMessage()
    assert code == 1
    assert "KeyError" in message and "boom" in message and "-v" in message and "report" in message
    assert "\n" not in message and line.exc_info is None


@pytest.mark.parametrize("argv", [["-v", "bench"], ["bench", "-v"]])
@pytest.mark.parametrize(
    ("err", "code"),
    [(KeyError("boom"), 1), (ConfigError("bad key; fix it"), 2)],
    ids=["unexpected", "expected"],
)
def test_verbose_adds_the_traceback_to_both_kinds(monkeypatch, caplog, argv, err, code):
    monkeypatch.setattr(cli, "cmd_bench", raising(err))
    got, line = run_main(argv, caplog)
    assert got == code
    assert line.exc_info is not None and line.exc_info[1] is err


def test_a_saekit_error_message_is_squeezed_onto_one_line(monkeypatch, caplog):
    monkeypatch.setattr(cli, "cmd_bench", raising(DataError("width 32\nvs 64;\n  fix it")))
    code, line = run_main(["bench"], caplog)
    assert code == 2 and line.getMessage() == "width 32 vs 64; fix it"


@pytest.mark.parametrize(
    ("err", "fragments"),
    [
        (
            OSError(errno.ENOSPC, "No space left on device", "/data/cache/.shard.tmp-1"),
            ("/data/cache", "disk is full"),
        ),
        (PermissionError(errno.EACCES, "Permission denied", "/data/runs/x"), ("/data/runs/x", "permission")),
        (
            FileNotFoundError(errno.ENOENT, "No such file or directory", "/nope/x"),
            ("/nope/x", "does not exist"),
        ),
        (OSError(errno.EROFS, "Read-only file system", "/ro/x"), ("/ro/x", "read-only")),
        (
            SafetensorError(
                'Error while serializing: I/O error: No space left on device (os error 28) at path "/d/.t"'
            ),
            ("/d", "disk is full"),
        ),
        (MemoryError(), ("out of memory", "batch_size")),
        (
            RuntimeError(
                "[enforce fail] DefaultCPUAllocator: can't allocate memory: you tried to allocate 4 TB"
            ),
            ("out of memory", "4 TB", "batch_size"),
        ),
    ],
    ids=["ENOSPC", "EACCES", "ENOENT", "EROFS", "rust-ENOSPC", "MemoryError", "torch-CPU-OOM"],
)
def test_expected_os_failures_are_one_line_with_the_path_and_fix(monkeypatch, caplog, err, fragments):
    monkeypatch.setattr(cli, "cmd_bench", raising(err))
    code, line = run_main(["bench"], caplog)
    assert code == 2 and line.exc_info is None
    for fragment in fragments:
        assert fragment in line.getMessage()


def test_a_file_where_a_directory_is_needed_is_named(tmp_path, monkeypatch, caplog):
    (tmp_path / "afile").write_text("x")

    def command(args):
        (tmp_path / "afile" / "sub" / "deeper").mkdir(parents=True)

    monkeypatch.setattr(cli, "cmd_bench", command)
    code, line = run_main(["bench"], caplog)
    assert code == 2
    assert f"{tmp_path / 'afile'} is a file where a directory is needed" in line.getMessage()


def test_an_unrelated_os_error_is_not_dressed_up():
    assert as_resource_error(ConnectionResetError(errno.ECONNRESET, "reset")) is None
    assert as_resource_error(OSError("no errno")) is None
    assert as_resource_error(ValueError("os error 28? no: no such pattern")) is None


def test_resource_error_is_an_os_error_with_a_plain_message():
    err = ResourceError("writing into /x: the disk is full", code=errno.ENOSPC, path="/x/y")
    assert (
        isinstance(err, OSError)
        and err.errno == errno.ENOSPC
        and str(err) == "writing into /x: the disk is full"
    )


# ---------------------------------------------------------------------------------------- disk full


def collect_argv(out_dir) -> list[str]:
    return [
        "collect",
        "model=tiny",
        f"hookpoints=[{HOOK}]",
        f"out_dir={out_dir}",
        "max_tokens=300",
        "shard_tokens=100",
        "context_length=32",
        "batch_size=4",
    ]


@pytest.mark.parametrize("fault", ["rust-text", "oserror"])
def test_collect_on_a_full_disk_keeps_whole_shards_and_resumes(tmp_path, monkeypatch, caplog, fault):
    from saekit.activations import open_cache, writer

    real_save, calls = writer.save_file, []

    def full_after_one_shard(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            if fault == "oserror":
                raise OSError(errno.ENOSPC, "No space left on device", path)
            raise SafetensorError(f'I/O error: No space left on device (os error 28) at path "{path}"')
        real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(writer, "save_file", full_after_one_shard)
    code, line = run_main(collect_argv(tmp_path / "cache"), caplog)
    assert code == 2
    assert "disk is full" in line.getMessage() and str(tmp_path / "cache" / HOOK) in line.getMessage()
    partial = open_cache(tmp_path / "cache", HOOK, allow_incomplete=True)
    assert partial.num_shards == 1 and not partial.complete
    assert list((tmp_path / "cache" / HOOK).glob(".*.tmp-*")) == []

    monkeypatch.setattr(writer, "save_file", real_save)
    assert cli.main(collect_argv(tmp_path / "cache")) == 0
    assert cli.main(collect_argv(tmp_path / "clean")) == 0
    resumed, clean = open_cache(tmp_path / "cache", HOOK), open_cache(tmp_path / "clean", HOOK)
    resumed.verify()
    assert [s["sha256"] for s in resumed.manifest["shards"]] == [
        s["sha256"] for s in clean.manifest["shards"]
    ]


def test_an_unwritable_out_dir_fails_before_any_work(tmp_path, monkeypatch, caplog):
    import os

    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: p != tmp_path and real_access(p, mode, **kw))
    code, line = run_main(collect_argv(tmp_path / "cache"), caplog)
    assert code == 2
    assert (
        f"cannot write into {tmp_path} (permission denied)" in line.getMessage()
        and "out_dir" in line.getMessage()
    )
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------- devices


@pytest.mark.parametrize(
    ("argv", "key"),
    [
        (["train", "cache_dir=nowhere", "run_dir={tmp}/run", "device=cuda"], "device=cuda"),
        (["train", "cache_dir=null", "live.device=cuda", "run_dir={tmp}/run"], "live.device=cuda"),
        (["collect", "model=tiny", "out_dir={tmp}/cache", "device=cuda"], "device=cuda"),
        (["eval", "{tmp}/run", "device=cuda"], "device=cuda"),
    ],
    ids=["train", "train-live", "collect", "eval"],
)
def test_cuda_without_cuda_fails_before_any_work(tmp_path, monkeypatch, caplog, argv, key):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, line = run_main([a.format(tmp=tmp_path) for a in argv], caplog)
    assert code == 2
    assert key in line.getMessage() and key.replace("cuda", "cpu") in line.getMessage()
    assert list(tmp_path.iterdir()) == []


def test_a_model_whose_hook_width_differs_from_the_sae_is_refused():
    from saekit.eval.evaluate import check_model_fits_sae
    from saekit.models import load_model

    model = load_model("tiny")
    with pytest.raises(DataError, match="width 64 but the SAE has d_in=32"):
        check_model_fits_sae(model, SimpleNamespace(hookpoint=HOOK, d_in=32), context_length=32)
    with pytest.raises(ConfigError, match="context_length=129 exceeds the model's context of 128"):
        check_model_fits_sae(model, SimpleNamespace(hookpoint=HOOK, d_in=64), context_length=129)


# ---------------------------------------------------------------------------------------- the app


def test_app_on_a_busy_port_is_one_line(sandbox, caplog):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, line = run_main(["app", str(sandbox), "--port", str(port)], caplog)
    assert code == 2 and f"127.0.0.1:{port}" in line.getMessage() and "--port" in line.getMessage()


def test_app_without_streamlit_is_one_line(sandbox, monkeypatch, caplog):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "streamlit" else real(name, *a)
    )
    code, line = run_main(["app", str(sandbox), "--port", "0"], caplog)  # port checked first
    assert code == 2 and "1-65535" in line.getMessage()
    code, line = run_main(["app", str(sandbox), "--port", str(free_port())], caplog)
    assert code == 2 and "pip install streamlit" in line.getMessage()


def test_app_server_failure_and_ctrl_c(sandbox, monkeypatch, caplog):
    import saekit.app_launcher as launcher

    monkeypatch.setattr(launcher.subprocess, "run", lambda *a, **k: SimpleNamespace(returncode=1))
    code, line = run_main(["app", str(sandbox), "--port", str(free_port())], caplog)
    assert code == 2 and "exited with status 1" in line.getMessage()
    monkeypatch.setattr(launcher.subprocess, "run", raising(KeyboardInterrupt()))
    assert cli.main(["app", str(sandbox), "--port", str(free_port())]) == 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
