"""The evaluation extras of eval.json on the Overview page: achieved L0 against its target (and the
threshold calibration), shrinkage, dense and duplicate latents, per-prefix FVU in frequency and index
order, and, when evaluated, seed consistency, absorption and the synthetic ground-truth scores. Only
displays what `saekit eval` wrote (saekit.eval.extras); keys are prefixed `overview_extras_`.

    from components import eval_extras
    eval_extras.show(result)          # result: the parsed eval.json
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
import streamlit as st

from components.tables import show_table


def _num(value: Any, pattern: str = "{:.4f}") -> str:
    return "—" if value is None else pattern.format(value)


def show(result: dict[str, Any]) -> None:
    """Render every extras block present in `result` (older eval.json files simply show less)."""
    target = result.get("sparsity_target") or {}
    extras = result.get("extras") or {}
    if not target and not extras:
        return
    st.markdown("**Sparsity target and further evaluations**")
    _sparsity(result, target)
    if extras:
        _reconstruction(extras)
        _prefix_fvu(extras.get("prefix_fvu") or {})
    for title, key in (("Seed consistency", "seed_consistency"), ("Synthetic ground truth", "synthetic")):
        block = extras.get(key)
        if block:
            rows = [{"metric": k, "value": v} for k, v in block.items() if isinstance(v, (int, float, str))]
            st.caption(title)
            show_table(rows, key=f"overview_extras_{key}", full_height=True)
    absorption = (extras.get("absorption") or {}).get("mean")
    if absorption:
        st.caption("Feature absorption (first letter, SAEBench names)")
        show_table([{"metric": k, "value": v} for k, v in absorption.items()], key="overview_extras_abs")


def _sparsity(result: dict[str, Any], target: dict[str, Any]) -> None:
    achieved = (result.get("heldout") or {}).get("l0_mean")
    calibration = target.get("calibration") or {}
    row = {"held-out L0": _num(achieved, "{:.2f}"), "target L0": _num(target.get("target_l0"), "{:.2f}")}
    if calibration:
        row |= {
            "θ": f"calibrated ({calibration.get('estimator')}, {calibration.get('rows')} rows)",
            "L0 with trained θ": _num(calibration.get("l0_before"), "{:.2f}"),
        }
    else:
        row["θ"] = "as trained (saekit eval calibrate=heldout re-estimates it)"
    show_table([row], key="overview_extras_target", full_height=True)


def _reconstruction(extras: dict[str, Any]) -> None:
    shrink = extras.get("shrinkage") or {}
    dense = extras.get("dense_latents") or {}
    dup = extras.get("duplicate_latents") or {}
    row = {
        "L2 ratio": _num(shrink.get("l2_ratio")),
        "rel. reconstruction bias": _num(shrink.get("relative_reconstruction_bias")),
        "cosine": _num((extras.get("reconstruction_quality") or {}).get("cossim")),
        "dense >10 % (share of firings)": f"{_num(dense.get('fraction_above_0.1'), '{:.2%}')} "
        f"({_num(dense.get('firing_share_above_0.1'), '{:.1%}')})",
        "max decoder cos": _num((dup.get("decoder") or {}).get("max_cosine")),
        "near-duplicate decoders": _num((dup.get("decoder") or {}).get("fraction_above_0.9"), "{:.2%}"),
    }
    show_table([row], key="overview_extras_recon", full_height=True)


def _prefix_fvu(prefix: dict[str, Any]) -> None:
    widths = prefix.get("widths")
    if not widths:
        return
    fig = go.Figure()
    for order in ("frequency", "index"):
        fig.add_trace(
            go.Scatter(x=widths, y=prefix.get(f"fvu_{order}_order"), mode="lines+markers", name=order)
        )
    fig.update_layout(
        xaxis={"title": "latents kept (prefix width)", "type": "log"},
        yaxis={"title": "held-out FVU"},
        height=300,
        margin={"t": 30, "b": 40},
        title="Per-prefix FVU: most frequent latents first vs index order",
    )
    st.plotly_chart(fig, key="overview_extras_prefix")
