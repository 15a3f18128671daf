"""Overview page: every run in RUNS_DIR at a glance, then the selected run's key settings, training
curves (loss, FVU, L0, dead fraction, learning rate, throughput) and evaluation. Runs without a training
log (imported SAEs) or without eval.json get a short note instead. Session keys are prefixed `overview_`.

    streamlit run app/streamlit_app.py -- --runs-dir runs       # opens on this page
"""

import html

import streamlit as st
from components import eval_extras, plots, state
from components.tables import show_table

from saekit.run_summary import run_hyperparameters
from saekit.runs import eval_table_rows, runs_table

CURVES = ("loss", "fvu", "l0", "dead_fraction", "lr", "tokens_per_s")

st.title("Overview")
runs = state.all_runs()
run = state.selected_run()
if run is None:
    st.stop()

st.subheader("Runs")
show_table(runs_table(runs), key="overview_runs_table", full_height=len(runs) <= 20)


def settings_chips(settings: dict[str, str]) -> str:
    """Key settings as wrapping 'name value' chips: nothing is cut, nothing is hidden in a collapsed tree."""
    chips = "".join(
        '<span style="display: inline-block; margin: 0 8px 6px 0; padding: 2px 8px; border-radius: 6px; '
        f'background: rgba(128,128,128,0.14);"><span style="opacity: 0.65;">{html.escape(name)}</span> '
        f"<b>{html.escape(value)}</b></span>"
        for name, value in settings.items()
    )
    return f'<div class="saekit-settings">{chips}</div>'


st.subheader(f"Run: {run.name}")
st.caption(str(run.path))
if run.error:
    st.error(run.error)
st.markdown(settings_chips(run_hyperparameters(run)), unsafe_allow_html=True)
with st.expander("Full config"):
    st.json(run.config or {}, expanded=True)

st.markdown("**Training curves**")
rows = state.metrics_of(run)
if rows:
    st.plotly_chart(plots.curves_figure(rows, CURVES), key="overview_curves")
    st.caption(f"{len(rows)} log points, last at {rows[-1].get('tokens', 0):,} tokens")
elif run.has_metrics:
    st.info("metrics.jsonl is empty: the run has not logged a step yet.")
else:
    st.info("No training log (metrics.jsonl): this SAE was imported or has not started training.")

st.subheader("Evaluation")
result = state.eval_of(run)
if result is None:
    st.info(f"Not evaluated yet; run `saekit eval {run.path}` to write eval.json.")
else:
    show_table(eval_table_rows(result), key="overview_eval_table", full_height=True)
    eval_extras.show(result)
    tokens = (result.get("settings") or {}).get("tokens") or {}
    st.caption(
        f"cached: last {tokens.get('cached_rows', 0):,} training-cache rows (measure fit) · held-out: "
        f"{tokens.get('heldout_scored_positions', 0):,} scored positions of unseen text"
    )
