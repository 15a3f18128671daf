"""Compare page: evaluated runs side by side — sparsity/fidelity Pareto plots (L0 vs FVU, L0 vs CE
recovered), per-prefix (Matryoshka) or per-k (multi/hierarchical TopK) curves when eval.json has them,
per-token L0 histograms, and the frontiers and claim verdicts of any `saekit study` under the runs directory
(`components/study.py`). Session keys are prefixed `compare_`.

    at.switch_page("pages/compare.py").run()
    at.multiselect(key="compare_runs").set_value(["tiny/topk"]).run()
"""

import streamlit as st
from components import plots, state, study
from components.tables import show_table

from saekit.runs import eval_headline, eval_levels, method_name

st.title("Compare runs")
runs = state.all_runs()
if state.selected_run() is None:
    st.stop()

evaluated = {run.name: run for run in runs if run.has_eval}
if not evaluated:
    st.info("No run has eval.json yet; run `saekit eval RUN` on the runs to compare.")
    st.stop()
chosen = st.multiselect("Runs", list(evaluated), default=list(evaluated), key="compare_runs")
results = {name: state.eval_of(evaluated[name]) for name in chosen}
results = {name: r for name, r in results.items() if r}


def pareto_section() -> None:
    st.subheader("Sparsity vs fidelity")
    points = []
    for name, result in results.items():
        head = eval_headline(result)
        points.append(
            {
                "name": name,
                "method": method_name(evaluated[name].config) if evaluated[name].config else "?",
                "L0": head["l0"],
                "FVU": head["fvu"],
                "CE recovered": head["ce_recovered"],
            }
        )
    col_fvu, col_ce = st.columns(2)
    col_fvu.plotly_chart(
        plots.pareto_figure(
            points, "L0", "FVU", higher_is_better=False, title="L0 vs FVU (lower-left is better)"
        ),
        key="compare_pareto_fvu",
    )
    col_ce.plotly_chart(
        plots.pareto_figure(
            points,
            "L0",
            "CE recovered",
            higher_is_better=True,
            title="L0 vs CE recovered (upper-left is better)",
        ),
        key="compare_pareto_ce",
    )
    points.sort(key=lambda p: (p["method"], p["L0"] if p["L0"] is not None else float("inf")))
    show_table(points, key="compare_table", full_height=True)
    st.caption(
        "One colour per method; the line joins the runs of that method no other of its runs beats on both "
        "axes. Held-out numbers where available, else the cached training rows; CE recovered uses zero "
        "ablation."
    )


def levels_section() -> None:
    st.subheader("Per-prefix / per-k curves")
    levels = {name: eval_levels(result) for name, result in results.items()}
    levels = {name: rows for name, rows in levels.items() if rows}
    if not levels:
        st.caption(
            "None of the chosen runs has per-prefix (Matryoshka) or per-k (multi/hierarchical TopK) "
            "metrics in eval.json."
        )
        return
    metrics = sorted(
        {
            key
            for rows in levels.values()
            for row in rows
            for key, value in row.items()
            if key != "level" and isinstance(value, (int, float)) and not isinstance(value, bool)
        }
    )
    default = "fvu" if "fvu" in metrics else metrics[0]
    metric = st.selectbox("Metric", metrics, index=metrics.index(default), key="compare_level_metric")
    series = {
        name: (
            [r["level"] for r in rows if r.get(metric) is not None],
            [r[metric] for r in rows if r.get(metric) is not None],
        )
        for name, rows in levels.items()
    }
    kinds = {row.get("kind") for rows in levels.values() for row in rows}
    axis = {"prefix": "prefix width", "k": "k"}.get(kinds.pop(), "level") if len(kinds) == 1 else "level"
    st.plotly_chart(plots.lines_by_group(series, axis, metric), key="compare_levels_plot")


def l0_section() -> None:
    st.subheader("Per-token L0")
    series = {}
    for name, result in results.items():
        part = result.get("heldout") or result.get("cached") or {}
        counts = part.get("l0_histogram")
        if counts and sum(counts) > 0:
            total = sum(counts)
            series[name] = (list(range(len(counts))), [c / total for c in counts])
    if not series:
        st.caption("No per-token L0 histograms in the chosen eval.json files.")
        return
    st.plotly_chart(
        plots.lines_by_group(series, "active latents per token (L0)", "share of tokens"),
        key="compare_l0_plot",
    )


if not results:
    st.info("Choose at least one evaluated run.")
    st.stop()
pareto_section()
levels_section()
l0_section()
study.study_section()
