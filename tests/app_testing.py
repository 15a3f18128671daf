"""Shared pieces of the AppTest modules (tests/test_app*.py): the fixture runs, an app started on a
RUNS_DIR, and readers for what a page shows (tables, plotly specs, markdown).

    @pytest.fixture(scope="session")
    def runs_dir(tmp_path_factory): return fixture_runs(tmp_path_factory)
    at = open_app(runs_dir, "latents"); frame = table(at, "latent", "cosine")
"""

import json
import os
from contextlib import contextmanager
from pathlib import Path

from fixtures_run import TOPK_RUN, build_fixture_runs
from streamlit.testing.v1 import AppTest

from saekit.analysis import LatentIndex
from saekit.app_launcher import RUNS_ENV
from saekit.runs import load_run_model, load_run_sae

APP = Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py"
TIMEOUT = 120  # the first run in a process imports TransformerLens and loads the model


def fixture_runs(tmp_path_factory) -> Path:
    """The shared fixture RUNS_DIR (built once per session, see fixtures_run.py)."""
    return build_fixture_runs(tmp_path_factory.getbasetemp() / "saekit_runs")


def fixture_index(runs_dir: Path) -> LatentIndex:
    return LatentIndex.open(runs_dir / TOPK_RUN)


def fixture_model_and_sae(runs_dir: Path) -> tuple:
    return load_run_model(runs_dir / TOPK_RUN), load_run_sae(runs_dir / TOPK_RUN)


@contextmanager
def started_with(runs_dir: Path):
    """The app's start directory, as `saekit app RUNS_DIR` passes it (read on a session's first run)."""
    old = os.environ.get(RUNS_ENV)
    os.environ[RUNS_ENV] = str(runs_dir)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(RUNS_ENV)
        else:
            os.environ[RUNS_ENV] = old


def open_app(runs_dir: Path, page: str | None = None, run: str | None = None) -> AppTest:
    """The app started with RUNS_DIR = `runs_dir` (it serves nothing outside it)."""
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    if run is not None:
        at.session_state["app_run"] = run
    with started_with(runs_dir):
        at.run()
    if page is not None:
        at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def plotly_specs(at: AppTest) -> dict[str, dict]:
    """Plotly figures on the page by their widget key suffix (e.g. 'overview_curves')."""
    return {el.key: json.loads(el.proto.spec) for el in at.get("plotly_chart")}


def table(at: AppTest, *columns: str):
    """The first dataframe on the page having all `columns` (AppTest does not expose dataframe keys)."""
    for frame in at.dataframe:
        if set(columns) <= set(frame.value.columns):
            return frame.value
    raise AssertionError(f"no table with columns {columns}")


def markdown_text(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown)


def keyed_table(at: AppTest, key: str):
    """The dataframe drawn with widget key `key` (only selectable tables carry their key in AppTest)."""
    for frame in at.dataframe:
        if frame.key == key:
            return frame.value
    raise AssertionError(f"no table with key {key!r}; keys: {[f.key for f in at.dataframe]}")
