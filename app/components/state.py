"""Cached loaders and the app-wide run selection, shared by every page.

Models, SAEs and indexes are `st.cache_resource` (one instance per process, never copied); tables read
from disk are `st.cache_data`, keyed by the file's modification time so a re-run `saekit eval` or
`saekit index` shows up on the next rerun. App-level session keys start with `app_`.

    run = selected_run()                  # RunInfo of the sidebar selection, or None (message shown)
    runs_root()                           # the directory the app serves; nothing outside it is listed
    index = load_index(run)               # LatentIndex, or None (with the command to build it)
    model, sae = load_model_and_sae(run)   # cached per model name / SAE file; None after an error
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import streamlit as st

from saekit.analysis import LatentIndex, SteeringResult, coefficient_sweep, encode_text, output_score, steer
from saekit.analysis.steerability import steerability
from saekit.errors import RunDirError, SaekitError
from saekit.eval.metrics import log_density_histogram
from saekit.rundir import RunDir
from saekit.runs import RunInfo, list_runs, load_eval, load_metrics, load_run_sae, run_model_name

RUNS_ENV = "SAEKIT_RUNS_DIR"


def runs_dir_argument() -> str:
    """RUNS_DIR from `streamlit run app/streamlit_app.py -- --runs-dir DIR`, else $SAEKIT_RUNS_DIR, else
    ./runs. Only the exact flag is looked for, so foreign argv (pytest's, under AppTest) is ignored."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--runs-dir", default=None)
    known, _ = parser.parse_known_args(sys.argv[1:])
    return known.runs_dir or os.environ.get(RUNS_ENV) or "runs"


def _mtime(path: Path) -> float:
    return path.stat().st_mtime if path.exists() else 0.0


def runs_root() -> Path:
    """The directory the app was started with, resolved once per session: nothing outside it is listed.

    Kept in a session key that no widget writes, so the browser cannot change it."""
    if "app_runs_root" not in st.session_state:
        st.session_state["app_runs_root"] = str(Path(runs_dir_argument()).expanduser().resolve())
    return Path(st.session_state["app_runs_root"])


def confine(runs_dir: str) -> Path:
    """`runs_dir` (relative ones taken from the root) resolved, `..` and symlinks included; SaekitError
    when it leaves the directory the app was started with (RunDirError)."""
    root = runs_root()
    try:
        path = Path(runs_dir.strip() or root).expanduser()
        resolved = (path if path.is_absolute() else root / path).resolve()
    except (OSError, RuntimeError, ValueError) as err:  # symlink loop, NUL byte in the text
        raise RunDirError(
            f"cannot use {runs_dir!r} as a runs directory ({err}); enter a path inside {root}"
        ) from None
    if not _inside(root, resolved):
        raise RunDirError(
            f"{runs_dir} is outside {root}, the runs directory this app was started with; enter a "
            "directory inside it, or restart the app with `saekit app DIR` to serve another"
        )
    return resolved


def _inside(root: Path, path: Path) -> bool:
    return path == root or root in path.parents


@st.cache_data(ttl=30, show_spinner=False)
def _cached_runs(runs_dir: str) -> list[RunInfo]:
    # short ttl: new runs appear within half a minute without restarting the app
    return list_runs(runs_dir)


def discover_runs(runs_dir: str) -> tuple[list[RunInfo], str | None]:
    """(runs inside the app's root, error message); the message carries the fix from `saekit.runs`."""
    try:
        directory = confine(runs_dir)
        runs = _cached_runs(str(directory))
    except SaekitError as err:
        return [], str(err)
    except (OSError, RuntimeError) as err:  # an unreadable or looping directory below it
        return [], f"cannot list runs under {runs_dir} ({type(err).__name__}: {err}); pick another directory"
    root, seen, inside = runs_root(), set(), []
    for run in runs:  # sorted by name: a run reached again through a symlink keeps its shortest name
        real = run.path.resolve()
        if _inside(root, real) and real not in seen:  # a symlinked run may point outside the root
            seen.add(real)
            inside.append(run)
    if runs and not inside:
        return [], f"every run under {runs_dir} links outside {root}, the directory this app serves"
    return inside, None


def _keep(widget_key: str, store_key: str) -> None:
    st.session_state[store_key] = st.session_state[widget_key]


def sidebar_run_picker() -> None:
    """Runs-dir box and run selector in the sidebar.

    The choices live in plain session keys (`app_runs_dir`, `app_run`) copied from the widgets on change:
    Streamlit drops a widget's state on a run that does not render it (page switches included), while a
    plain key persists for the whole session. The box only accepts directories inside `runs_root()`.
    """
    if "app_runs_dir" not in st.session_state:
        st.session_state["app_runs_dir"] = str(runs_root())
    st.session_state["app_runs_dir_box"] = st.session_state["app_runs_dir"]
    st.sidebar.text_input(
        "Runs directory", key="app_runs_dir_box", on_change=_keep, args=("app_runs_dir_box", "app_runs_dir")
    )
    runs, error = discover_runs(st.session_state["app_runs_dir"])
    if error:
        st.sidebar.error(error)
        return
    names = [run.name for run in runs]
    if st.session_state.get("app_run") not in names:
        st.session_state["app_run"] = names[0]
    st.session_state["app_run_box"] = st.session_state["app_run"]
    st.sidebar.selectbox("Run", names, key="app_run_box", on_change=_keep, args=("app_run_box", "app_run"))
    run = next(r for r in runs if r.name == st.session_state["app_run"])
    if run.error:
        st.sidebar.warning(f"config.yaml of {run.name} is unreadable: {run.error}")


def current_runs() -> tuple[list[RunInfo], str | None]:
    """(runs, error) of the directory chosen in the sidebar (the start directory until one is typed)."""
    return discover_runs(st.session_state.get("app_runs_dir") or str(runs_root()))


def all_runs() -> list[RunInfo]:
    return current_runs()[0]


def selected_run() -> RunInfo | None:
    """The sidebar's run, or None after showing why there is none (missing, empty or refused runs dir)."""
    runs, error = current_runs()
    if error or not runs:
        st.error(error or "no runs found")
        return None
    name = st.session_state.get("app_run")
    return next((r for r in runs if r.name == name), runs[0])


# ---------------------------------------------------------------------------------------- tables


@st.cache_data(show_spinner=False, max_entries=64)
def _metrics(path: str, stamp: float) -> list[dict[str, Any]]:
    return load_metrics(path)


def metrics_of(run: RunInfo) -> list[dict[str, Any]]:
    return _metrics(str(run.path), _mtime(run.path / "metrics.jsonl"))


@st.cache_data(show_spinner=False, max_entries=64)
def _eval(path: str, stamp: float) -> dict[str, Any] | None:
    return load_eval(path)


def eval_of(run: RunInfo) -> dict[str, Any] | None:
    try:
        return _eval(str(run.path), _mtime(RunDir(run.path).eval_path))
    except SaekitError as err:
        st.warning(str(err))
        return None


# ---------------------------------------------------------------------------------------- resources


@st.cache_resource(show_spinner="Opening the latent index…", max_entries=8)
def _index(path: str, stamp: float) -> LatentIndex:
    return LatentIndex.open(path)


def load_index(run: RunInfo) -> LatentIndex | None:
    """The run's latent index, or None (with the `saekit index` command to build it)."""
    if not (run.path / "index" / "index.json").is_file():
        st.info(f"{run.name} has no latent index yet; build it with `saekit index {run.path}`.")
        return None
    try:
        return _index(str(run.path), _mtime(run.path / "index" / "index.json"))
    except SaekitError as err:
        st.error(str(err))
        return None


@st.cache_data(show_spinner=False, max_entries=64)
def _model_name(run_path: str) -> str:
    return run_model_name(run_path)


@st.cache_resource(show_spinner="Loading the model…", max_entries=2)
def _model(name: str) -> Any:
    # keyed by model name, so runs that share a model share one loaded copy; imported here because
    # TransformerLens takes seconds to import and the overview pages never need it
    from saekit.models import load_model

    return load_model(name)


@st.cache_resource(show_spinner=False, max_entries=8)
def _sae(run_path: str, stamp: float) -> Any:
    return load_run_sae(run_path)


def load_model_and_sae(run: RunInfo) -> tuple[Any, Any] | None:
    """(model, SAE in inference mode) for live encoding and steering, or None after an error message."""
    try:
        sae = _sae(str(run.path), sae_stamp(run))
        model = _model(_model_name(str(run.path)))
    except SaekitError as err:
        st.error(str(err))
        return None
    return model, sae


@st.cache_data(show_spinner="Encoding the text…", max_entries=32)
def _encoded(run_path: str, stamp: float, text: str) -> Any:
    sae = _sae(run_path, stamp)
    model = _model(_model_name(run_path))
    return encode_text(model, sae, text, top_m=sae.d_sae)  # every active latent: phrase search ranks them


def encode_live(run: RunInfo, text: str) -> Any:
    """`encode_text` of the run's model + SAE on `text` (cached per text), or None after an error."""
    try:
        return _encoded(str(run.path), sae_stamp(run), text)
    except SaekitError as err:
        st.error(str(err))
        return None


@st.cache_data(show_spinner=False, max_entries=8)
def _log_density(index_dir: str, stamp: float) -> tuple[list[int], list[float]]:
    return log_density_histogram(_index(str(Path(index_dir).parent), stamp).densities())


def index_log_density(run: RunInfo) -> tuple[list[int], list[float]]:
    """(counts, edges) of log10 firing frequency over the index's latents (the eval.json convention)."""
    return _log_density(str(run.path / "index"), _mtime(run.path / "index" / "index.json"))


# ---------------------------------------------------------------------------------------- steering


def sae_stamp(run: RunInfo) -> float:
    """Cache key part that changes when the run's final SAE is rewritten."""
    return _mtime(RunDir(run.path).final_dir / "sae.safetensors")


def checkpoint_stamp(run: RunInfo) -> float:
    """Cache key part that changes when a new training checkpoint appears."""
    return _mtime(RunDir(run.path).checkpoints_dir)


def load_run_sae_cached(run_path: str, stamp: float) -> Any:
    """The shared cached SAE (for cached computations inside pages)."""
    return _sae(run_path, stamp)


@st.cache_data(show_spinner="Generating default and steered text…", max_entries=32)
def _steer(
    run_path: str,
    stamp: float,
    prompt: str,
    latents: tuple,
    max_new_tokens: int,
    seed: int,
    temperature: float,
) -> SteeringResult:
    model, sae = _model(_model_name(run_path)), _sae(run_path, stamp)
    return steer(
        model, sae, prompt, dict(latents), max_new_tokens=max_new_tokens, seed=seed, temperature=temperature
    )


@st.cache_data(show_spinner="Sweeping coefficients…", max_entries=32)
def _sweep(
    run_path: str,
    stamp: float,
    prompt: str,
    latents: tuple,
    coefs: tuple,
    target: str | None,
    new_tokens: int,
) -> list:
    model, sae = _model(_model_name(run_path)), _sae(run_path, stamp)
    return coefficient_sweep(
        model, sae, prompt, list(latents), list(coefs), target_token=target, max_new_tokens=new_tokens
    )


@st.cache_data(show_spinner="Measuring steerability…", max_entries=32)
def _steerability(
    run_path: str, stamp: float, prompt: str, latents: tuple, coef: float, target: str | None
) -> list:
    model, sae = _model(_model_name(run_path)), _sae(run_path, stamp)
    return steerability(model, sae, list(latents), coef, prompt=prompt, target_token=target)


@st.cache_data(show_spinner="Scoring the latent's output effect…", max_entries=256)
def _output_score(run_path: str, stamp: float, latent: int) -> dict[str, float]:
    model, sae = _model(_model_name(run_path)), _sae(run_path, stamp)
    return output_score(model, sae, latent)


def _guarded(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except SaekitError as err:
        st.error(str(err))
        return None


def steer_live(
    run: RunInfo, prompt: str, latents: dict[int, float], max_new_tokens: int, seed: int, temperature: float
) -> SteeringResult | None:
    """`saekit.analysis.steer` on the run's model + SAE, cached per request."""
    key = tuple(sorted(latents.items()))
    return _guarded(_steer, str(run.path), sae_stamp(run), prompt, key, max_new_tokens, seed, temperature)


def sweep_live(
    run: RunInfo, prompt: str, latents: list[int], coefs: list[float], target: str | None, new_tokens: int = 0
) -> list | None:
    """`coefficient_sweep` rows (KL, target logit, generated text, ... per coefficient), cached per
    request; the latents are steered together."""
    key = (str(run.path), sae_stamp(run), prompt, tuple(latents), tuple(coefs), target or None, new_tokens)
    return _guarded(_sweep, *key)


def steerability_live(
    run: RunInfo, prompt: str, latents: list[int], coef: float, target: str | None
) -> list | None:
    """`steerability` rows (target gain vs KL / loss cost per latent, best first), cached per request."""
    key = (str(run.path), sae_stamp(run), prompt, tuple(latents), float(coef), target or None)
    return _guarded(_steerability, *key)


def output_score_live(run: RunInfo, latent: int) -> dict[str, float] | None:
    return _guarded(_output_score, str(run.path), sae_stamp(run), latent)
