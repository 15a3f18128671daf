"""A regular (non-editable) install ships every module and the app, and `saekit app` serves from any
directory. The install goes into a fresh venv that borrows the dependencies of the running environment
(a .pth line, so nothing is downloaded) and builds saekit from a copy of the sources (the checkout is not
written to)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import pytest

from saekit.config import SaeConfig, TrainConfig, save_config

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "saekit", "kernels", "app")

pytestmark = pytest.mark.slow  # a wheel build, a fresh interpreter importing torch, a Streamlit server


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python of a fresh venv with saekit installed non-editable, a working directory outside the repo)."""
    root = tmp_path_factory.mktemp("install")
    src = root / "src"
    src.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # Only the directory is added: the running environment's own .pth files (its editable saekit) are not.
    (Path(site) / "borrowed_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps"]
    subprocess.run([*pip, "--no-build-isolation", str(src)], check=True, cwd=root)
    work = root / "elsewhere"
    work.mkdir()
    return python, work


def _run(python: Path, code: str, cwd: Path) -> str:
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=cwd, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_every_source_module_is_installed_and_imports(installed):
    python, work = installed
    expected = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in (ROOT / "saekit").rglob("*.py")
    }
    expected |= {
        "saekit.kernels" + (f".{p.stem}" if p.stem != "__init__" else "")
        for p in (ROOT / "kernels").glob("*.py")
    }
    code = (
        "import pkgutil, importlib, json, saekit\n"
        "mods = {'saekit'} | {m.name for m in pkgutil.walk_packages(saekit.__path__, 'saekit.')\n"
        "                      if m.name.split('.')[:2] != ['saekit', 'app']}\n"
        "[importlib.import_module(m) for m in sorted(mods - {'saekit.__main__'})]  # __main__ runs the CLI\n"
        "print(json.dumps({'file': saekit.__file__, 'mods': sorted(mods)}))"
    )
    found = json.loads(_run(python, code, work).strip().splitlines()[-1])
    assert not found["file"].startswith(str(ROOT)), "saekit came from the checkout, not the install"
    assert expected <= set(found["mods"]), sorted(expected - set(found["mods"]))


def test_the_app_is_installed_with_its_pages(installed):
    python, work = installed
    code = "from saekit.app_launcher import find_app_dir; print(find_app_dir())"
    app_dir = Path(_run(python, code, work).strip().splitlines()[-1])
    assert not str(app_dir).startswith(str(ROOT))
    shipped = {p.relative_to(app_dir).as_posix() for p in app_dir.rglob("*") if p.is_file()}
    source = {
        p.relative_to(ROOT / "app").as_posix()
        for p in (ROOT / "app").rglob("*")
        # screenshots/ are the README's pictures of the app, not something it serves
        if p.is_file() and "__pycache__" not in p.parts and "screenshots" not in p.parts
    }
    assert source <= shipped, sorted(source - shipped)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_saekit_app_serves_from_any_directory(installed):
    python, work = installed
    run = work / "runs" / "r"
    cfg = TrainConfig(sae=SaeConfig.make("topk", k=4, d_sae=32), cache_dir=str(run / "c"), run_dir=str(run))
    (run / "final").mkdir(parents=True)
    save_config(cfg, run / "config.yaml")
    (run / "final" / "cfg.json").write_text(json.dumps({"model_id": "tiny"}))
    port = _free_port()
    server = subprocess.Popen(
        [str(python.parent / "saekit"), "app", "runs", "--port", str(port)],
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: `saekit app` runs Streamlit as a child
    )
    try:
        assert _healthy(port, server), (
            server.stdout.read().decode()[-2000:] if server.poll() is not None else ""
        )
    finally:
        _stop_group(server)


def _stop_group(server: subprocess.Popen) -> None:
    """SIGTERM to the launcher and Streamlit, SIGKILL if they have not gone within 30 s."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
    except ProcessLookupError:
        pass


def _healthy(port: int, server: subprocess.Popen, timeout_s: float = 180.0) -> bool:
    """Poll Streamlit's health endpoint until it answers, the server exits, or the time is up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=5) as reply:
                return reply.status == 200
        except OSError:
            time.sleep(0.5)
    return False
