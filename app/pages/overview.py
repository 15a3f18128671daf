"""Overview page: every run in RUNS_DIR at a glance, then the selected run's config, training curves and
evaluation. Session keys are prefixed `overview_`.

    streamlit run app/streamlit_app.py -- --runs-dir runs       # opens on this page
"""

import streamlit as st
from components import plots, state

from saekit.runs import eval_table_rows, runs_table

CURVES = ("loss", "fvu", "l0", "dead_fraction")

st.title("Overview")
runs = state.all_runs()
run = state.selected_run()
if run is None:
    st.stop()

st.subheader("Runs")
st.dataframe(runs_table(runs), hide_index=True, key="overview_runs_table")

st.subheader(f"Run: {run.name}")
st.caption(str(run.path))
left, right = st.columns([1, 2])
with left:
    st.markdown("**Config**")
    if run.error:
        st.error(run.error)
    else:
        st.json(run.config, expanded=1)
with right:
    st.markdown("**Training curves**")
    rows = state.metrics_of(run)
    if rows:
        st.plotly_chart(plots.curves_figure(rows, CURVES), key="overview_curves")
        st.caption(f"{len(rows)} log points, last at {rows[-1].get('tokens', '?')} tokens")
    else:
        st.info("metrics.jsonl is empty or missing: the run has not logged a step yet.")

st.subheader("Evaluation")
result = state.eval_of(run)
if result is None:
    st.info(f"Not evaluated yet; run `saekit eval {run.path}` to write eval.json.")
else:
    st.dataframe(eval_table_rows(result), hide_index=True, key="overview_eval_table")
    tokens = (result.get("settings") or {}).get("tokens") or {}
    st.caption(
        f"cached: last {tokens.get('cached_rows', 0)} training-cache rows (measure fit) · held-out: "
        f"{tokens.get('heldout_scored_positions', 0)} scored positions of unseen text"
    )
