"""`saekit app [RUNS_DIR]`: serve the Streamlit workbench (`app/streamlit_app.py`) on 127.0.0.1.

The app is the repository's app/ directory, installed as saekit/app by a regular (non-editable) install
(pyproject.toml maps it). It is looked for at $SAEKIT_APP_DIR, inside the installed package, beside the
package in a checkout (editable install), then in the working directory, so `saekit app` works from any
directory. Usage
statistics are off three ways (flag, environment, app/.streamlit/config.toml), because with them on the
browser calls an external metrics URL.

    launch_app(Path("runs"), port=8501)                      # blocks until the server stops
    cmd, env, cwd = app_command(Path("runs"), port=0)         # what tests start themselves
"""

from __future__ import annotations

import errno
import importlib.util
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

from saekit.errors import ConfigError, SaekitError

logger = logging.getLogger(__name__)

APP_ENV = "SAEKIT_APP_DIR"
RUNS_ENV = "SAEKIT_RUNS_DIR"
ENTRY = "streamlit_app.py"


class AppNotFoundError(SaekitError, FileNotFoundError):
    """The Streamlit app directory (app/streamlit_app.py) is not where saekit looks for it."""


class AppStartError(SaekitError, RuntimeError):
    """The Streamlit server could not start or stopped with an error."""


def find_app_dir() -> Path:
    """The directory holding streamlit_app.py: $SAEKIT_APP_DIR, the installed package's app/, the
    checkout's app/ beside the package, or ./app; raises AppNotFoundError naming every place it looked."""
    import saekit

    package = Path(saekit.__file__).resolve().parent
    candidates = []
    if os.environ.get(APP_ENV):
        candidates.append(Path(os.environ[APP_ENV]).expanduser())
    candidates += [package / "app", package.parent / "app", Path.cwd() / "app"]
    for directory in candidates:
        if (directory / ENTRY).is_file():
            return directory.resolve()
    looked = ", ".join(str(d) for d in candidates)
    raise AppNotFoundError(
        f"cannot find the saekit app ({ENTRY}); looked in {looked}. Reinstall saekit (`pip install .` "
        f"or `pip install -e .` in a checkout), or set {APP_ENV}=/path/to/saekit/app"
    )


def app_command(
    runs_dir: Path, *, port: int = 8501, address: str = "127.0.0.1"
) -> tuple[list[str], dict[str, str], Path]:
    """(argv, environment, working directory) that serve the app for `runs_dir`."""
    app_dir = find_app_dir()
    runs = Path(runs_dir).expanduser().resolve()
    argv = [
        sys.executable, "-m", "streamlit", "run", str(app_dir / ENTRY),
        "--server.address", address,
        "--server.port", str(port),
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none",
        "--", "--runs-dir", str(runs),
    ]  # fmt: skip
    env = {**os.environ, "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false", RUNS_ENV: str(runs)}
    # app/ as the working directory makes streamlit read app/.streamlit/config.toml
    return argv, env, app_dir


def launch_app(runs_dir: Path, port: int = 8501, *, address: str = "127.0.0.1") -> int:
    """Check the port, Streamlit and RUNS_DIR, then run the Streamlit server in the foreground. Every
    failure is a one-line SaekitError; a clean stop (Ctrl-C) returns 0."""
    from saekit.runs import list_runs

    check_port(port, address)
    if importlib.util.find_spec("streamlit") is None:
        raise AppStartError(
            "the app needs Streamlit (a saekit dependency), which is missing from this environment; run "
            "`pip install -e .` in the saekit checkout, or `pip install streamlit`"
        )
    runs = list_runs(runs_dir)  # fails fast, with the fix, on a missing or empty runs directory
    argv, env, cwd = app_command(runs_dir, port=port, address=address)
    logger.info("serving %d run(s) from %s at http://%s:%d", len(runs), runs_dir, address, port)
    try:
        code = subprocess.run(argv, env=env, cwd=cwd, check=False).returncode
    except KeyboardInterrupt:  # Ctrl-C reaches both processes; Streamlit shuts itself down
        return 0
    if code not in (0, -2, 130):  # 0 clean, -2/130 interrupted
        raise AppStartError(
            f"the Streamlit server exited with status {code}; its messages are above. Re-run with "
            "--port another free port if the address was the problem"
        )
    return 0


def check_port(port: int, address: str = "127.0.0.1") -> None:
    """ConfigError unless `port` is a valid TCP port that is free on `address` (checked by binding it
    briefly, so the failure is one line here rather than a traceback inside Streamlit)."""
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port {port} is not a TCP port; pass one in 1-65535 (default 8501)")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                fix = "another program (perhaps another `saekit app`) uses it; pass --port with a free port"
            elif err.errno == errno.EACCES:
                fix = "ports below 1024 need administrator rights; pass --port 8501 or another above 1023"
            else:
                fix = f"{err.strerror}; pass another --port"
            raise ConfigError(f"cannot serve on {address}:{port}: {fix}") from None
