"""Plotly figure builders shared by the pages. They arrange numbers the library already computed; none
of them derives a metric.

    st.plotly_chart(curves_figure(rows, ["loss", "fvu", "l0", "dead_fraction"]), key="overview_curves")
    st.plotly_chart(bars_from_histogram(edges, counts, "log10 density"), key="dead_density")
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

HEIGHT = 320


def curves_figure(rows: Sequence[dict[str, Any]], keys: Sequence[str], x: str = "tokens") -> go.Figure:
    """One small panel per metric key (those present in `rows`), plotted against `x`."""
    present = [k for k in keys if any(r.get(k) is not None for r in rows)]
    cols = min(2, max(1, len(present)))
    n_rows = max(1, -(-len(present) // cols))
    fig = make_subplots(rows=n_rows, cols=cols, subplot_titles=present or ["no metrics logged"])
    for i, key in enumerate(present):
        points = [(r.get(x), r[key]) for r in rows if r.get(key) is not None]
        fig.add_trace(
            go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], mode="lines+markers", name=key),
            row=i // cols + 1,
            col=i % cols + 1,
        )
        fig.update_xaxes(title_text=x, row=i // cols + 1, col=i % cols + 1)
        fig.update_yaxes(range=_flat_range([p[1] for p in points]), row=i // cols + 1, col=i % cols + 1)
    fig.update_yaxes(tickformat="~g", exponentformat="e")  # 0.00226 and 3.7e-4 read as such, not as 0
    fig.update_layout(height=HEIGHT * n_rows, showlegend=False, margin=dict(t=40, b=20))
    return fig


def _flat_range(values: Sequence[float]) -> list[float] | None:
    """An explicit y range around a constant series (plotly would centre it in [-1, 1]); None otherwise."""
    finite = [float(v) for v in values if isinstance(v, (int, float))]
    if not finite or max(finite) != min(finite):
        return None
    v = finite[0]
    if v == 0:  # e.g. no dead latents all along: a fraction's axis from 0
        return [-0.05, 1.0]
    return [v - abs(v) * 0.5, v + abs(v) * 0.5]


def _padded(values: Sequence[float], share: float) -> list[float] | None:
    """An axis range `share` wider than the data on each side, so edge labels stay inside the plot."""
    finite = [float(v) for v in values if isinstance(v, (int, float))]
    if not finite:
        return None
    lo, hi = min(finite), max(finite)
    pad = (hi - lo) * share or abs(lo) * share or 1.0
    return [lo - pad, hi + pad]


def bars_from_histogram(
    edges: Sequence[float], counts: Sequence[float], x_title: str, *, title: str | None = None
) -> go.Figure:
    """A histogram already binned by the library (len(edges) == len(counts) + 1)."""
    centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)]
    widths = [b - a for a, b in zip(edges[:-1], edges[1:], strict=True)]
    fig = go.Figure(go.Bar(x=centres, y=list(counts), width=widths, marker_line_width=0))
    fig.update_layout(
        height=HEIGHT,
        xaxis_title=x_title,
        yaxis_title="count",
        title=title,
        bargap=0,
        margin=dict(t=40 if title else 10, b=20),
    )
    return fig


def overlaid_histograms(
    groups: dict[str, Sequence[float]], x_title: str, *, title: str | None = None, nbins: int = 50
) -> go.Figure:
    """Raw values of a few groups (e.g. dead vs live), overlaid and normalised to probability."""
    fig = go.Figure()
    for name, values in groups.items():
        fig.add_trace(
            go.Histogram(x=list(values), name=name, nbinsx=nbins, opacity=0.6, histnorm="probability")
        )
    fig.update_layout(
        barmode="overlay",
        height=HEIGHT,
        xaxis_title=x_title,
        yaxis_title="share",
        title=title,
        margin=dict(t=40 if title else 10, b=20),
    )
    return fig


def labelled_scatter(
    points: Sequence[dict[str, Any]], x: str, y: str, *, label: str = "name", title: str | None = None
) -> go.Figure:
    """One marker per dict (runs on a Pareto plot), labelled; points missing x or y are skipped."""
    kept = [p for p in points if p.get(x) is not None and p.get(y) is not None]
    fig = go.Figure(
        go.Scatter(
            x=[p[x] for p in kept],
            y=[p[y] for p in kept],
            mode="markers+text",
            text=[str(p[label]) for p in kept],
            textposition="top center",
            marker=dict(size=11),
            cliponaxis=False,  # labels of points at the plot edge stay readable
        )
    )
    fig.update_layout(height=HEIGHT, xaxis_title=x, yaxis_title=y, title=title, margin=dict(t=40, b=20))
    return fig


def lines_by_group(
    series: dict[str, tuple[Sequence[Any], Sequence[Any]]],
    x_title: str,
    y_title: str,
    *,
    title: str | None = None,
    log_y: bool = False,
) -> go.Figure:
    """One line per named (xs, ys) series."""
    fig = go.Figure()
    for name, (xs, ys) in series.items():
        fig.add_trace(go.Scatter(x=list(xs), y=list(ys), mode="lines+markers", name=name))
    fig.update_layout(
        height=HEIGHT,
        xaxis_title=x_title,
        yaxis_title=y_title,
        title=title,
        margin=dict(t=40 if title else 10, b=20),
    )
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def sweep_figure(rows: Sequence[dict[str, Any]]) -> go.Figure:
    """KL to the unsteered distribution and (if requested) the target token's logit, vs coefficient."""
    has_target = any("target_logit" in r for r in rows)
    fig = make_subplots(specs=[[{"secondary_y": has_target}]])
    coefs = [r["coef"] for r in rows]
    fig.add_trace(
        go.Scatter(x=coefs, y=[r["kl"] for r in rows], mode="lines+markers", name="KL (nats)"),
        secondary_y=False,
    )
    if has_target:
        fig.add_trace(
            go.Scatter(
                x=coefs,
                y=[r.get("target_logit") for r in rows],
                mode="lines+markers",
                name=f"logit of {rows[0].get('target_token')!r}",
            ),
            secondary_y=True,
        )
        fig.update_yaxes(title_text="target logit", secondary_y=True)
    fig.update_yaxes(title_text="KL(default ‖ steered)", secondary_y=False)
    fig.update_layout(height=HEIGHT, xaxis_title="coefficient", margin=dict(t=30, b=20))
    return fig


def probability_shift_figure(shift: Sequence[dict[str, Any]]) -> go.Figure:
    """Default vs steered next-token probabilities of the tokens that moved most."""
    tokens = [repr(r["token"]) for r in shift]
    fig = go.Figure(
        [
            go.Bar(x=tokens, y=[r["p_default"] for r in shift], name="default"),
            go.Bar(x=tokens, y=[r["p_steered"] for r in shift], name="steered"),
        ]
    )
    fig.update_layout(
        barmode="group", height=HEIGHT, yaxis_title="next-token probability", margin=dict(t=10, b=20)
    )
    return fig


def marker_on_histogram(fig: go.Figure, x: float, text: str) -> go.Figure:
    """A vertical line at `x` (e.g. this latent's density among all latents)."""
    fig.add_vline(x=x, line_dash="dash", line_color="crimson", annotation_text=text)
    return fig


def pareto_figure(
    points: Sequence[dict[str, Any]], x: str, y: str, *, higher_is_better: bool, title: str | None = None
) -> go.Figure:
    """Runs as labelled markers, one colour per method, with each method's Pareto frontier as a line
    (`pareto_front`: the runs no other run of that method beats on both axes)."""
    from saekit.run_summary import pareto_front

    palette = qualitative.Plotly
    fig = go.Figure()
    methods = sorted({str(p.get("method")) for p in points})
    for i, method in enumerate(methods):
        mine = [
            p
            for p in points
            if str(p.get("method")) == method and p.get(x) is not None and p.get(y) is not None
        ]
        colour = palette[i % len(palette)]
        front = pareto_front(mine, x, y, higher_is_better=higher_is_better)
        fig.add_trace(
            go.Scatter(
                x=[p[x] for p in front],
                y=[p[y] for p in front],
                mode="lines",
                line=dict(color=colour, width=2),
                name=f"{method} frontier",
                legendgroup=method,
                hoverinfo="skip",
            )
        )
        fig.add_trace(
            go.Scatter(
                x=[p[x] for p in mine],
                y=[p[y] for p in mine],
                mode="markers+text",
                text=[str(p["name"]) for p in mine],
                textposition="top center",
                textfont=dict(size=11),
                marker=dict(size=10, color=colour),
                name=method,
                legendgroup=method,
                cliponaxis=False,  # labels of points at the plot edge stay readable
                hovertemplate=f"%{{text}}<br>{x} %{{x:.4g}}<br>{y} %{{y:.4g}}<extra>{method}</extra>",
            )
        )
    fig.update_layout(
        height=HEIGHT + 40,
        title=title,
        margin=dict(t=60, b=40, l=60, r=30),
        legend=dict(orientation="h", yanchor="top", y=-0.22),
    )
    shown = [p for p in points if p.get(x) is not None and p.get(y) is not None]
    fig.update_xaxes(title_text=x, automargin=True, range=_padded([p[x] for p in shown], 0.12))
    fig.update_yaxes(title_text=y, automargin=True, range=_padded([p[y] for p in shown], 0.18))
    return fig
