"""The study section of the Compare page: a `saekit study`'s frontiers (L0 vs FVU, L0 vs CE recovered per
method, mean over seeds with error bars for the seed spread in both axes) and each paper's claim with its
verdict. It reads study.json files under the chosen runs directory; it computes nothing itself.

    from components import study
    study.study_section()                 # session keys start with `compare_study_`
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import streamlit as st

from components import state

MAX_DEPTH = 3
"""study.json is looked for this many directories below the runs directory (runs/study/study.json)."""


def find_studies(root: Path) -> list[Path]:
    found: list[Path] = []
    for depth in range(MAX_DEPTH + 1):
        found += sorted(root.glob("/".join(["*"] * depth + ["study.json"])))
    return found


@st.cache_data(show_spinner=False, max_entries=16)
def _load(path: str, stamp: float) -> dict[str, Any] | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "runs" in data else None


def frontier_figure(frontiers: dict[str, list[dict[str, Any]]], metric: str, title: str) -> go.Figure:
    """One line per method through its (mean L0, mean metric) per k; error bars = half-range over seeds."""
    fig = go.Figure()
    for method, points in frontiers.items():
        pts = [p for p in points if p.get("l0") and p.get(metric)]
        fig.add_trace(
            go.Scatter(
                x=[p["l0"]["mean"] for p in pts],
                y=[p[metric]["mean"] for p in pts],
                error_x={"type": "data", "array": [p["l0"]["spread"] for p in pts], "visible": True},
                error_y={"type": "data", "array": [p[metric]["spread"] for p in pts], "visible": True},
                mode="lines+markers",
                name=method,
                text=[f"k={p['k']}" for p in pts],
            )
        )
    fig.update_layout(title=title, height=360, margin=dict(t=40, b=20), xaxis_type="log")
    fig.update_xaxes(title_text="held-out L0")
    fig.update_yaxes(title_text=metric)
    return fig


def claim_rows(claims: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for claim in claims:
        if "points" in claim:
            evidence = "; ".join(
                f"L0 {p['l0']:.0f}: {p['method']['mean']:.4f}±{p['method']['spread']:.4f} vs "
                f"{p['baseline']['mean']:.4f}±{p['baseline']['spread']:.4f}"
                for p in claim["points"]
            )
        elif "dead" in claim:
            evidence = f"max dead fraction {claim['max_dead']:.2%}"
        else:
            evidence = claim.get("reason", "")
        rows.append(
            {
                "method": claim["method"],
                "claim": claim["claim"],
                "source": claim["source"],
                "verdict": claim["verdict"],
                "evidence (mean ± half-range over seeds)": evidence,
            }
        )
    return rows


def study_section() -> None:
    st.subheader("Method study (saekit study)")
    runs_dir = Path(st.session_state.get("app_runs_dir") or state.runs_root())
    studies = find_studies(runs_dir) if runs_dir.is_dir() else []
    if not studies:
        st.caption("No study.json under the runs directory; run `saekit study` with out_dir inside it.")
        return
    names = [str(p.relative_to(runs_dir)) for p in studies]
    chosen = st.selectbox("Study", names, key="compare_study_file") if len(names) > 1 else names[0]
    path = runs_dir / chosen
    study = _load(str(path), path.stat().st_mtime)
    if study is None:
        st.warning(f"{chosen} is not a readable study.json")
        return
    frontiers = study.get("frontiers") or {}
    col_fvu, col_ce = st.columns(2)
    col_fvu.plotly_chart(
        frontier_figure(frontiers, "fvu", "FVU vs L0 (lower-left is better)"), key="compare_study_fvu"
    )
    col_ce.plotly_chart(
        frontier_figure(frontiers, "ce_recovered", "CE recovered vs L0 (upper-left is better)"),
        key="compare_study_ce",
    )
    st.dataframe(claim_rows(study.get("claims") or []), hide_index=True, key="compare_study_claims")
    st.caption(
        "A 'better' claim holds when the gain exceeds the seed noise at every common L0 (frontiers "
        "interpolated in log L0); error bars are half the range over seeds."
    )
    with st.expander("Runs (method × k × seed)"):
        keys = ("method", "k", "seed", "l0", "fvu", "ce_recovered", "dead")
        runs = [{key: run.get(key) for key in keys} for run in study["runs"]]
        st.dataframe(runs, hide_index=True, key="compare_study_runs")
