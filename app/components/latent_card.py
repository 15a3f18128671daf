"""One latent's card: numbers, examples (top, then quantile samples that do not repeat them), plots,
promoted/suppressed tokens, decoder neighbours with previews, the researcher's label, and an export.

    full_card(run, index, notes, 42)          # the Latents page
    compact_card(index, notes, 42)            # beside the Steering controls
"""

from __future__ import annotations

import math
from typing import Any

import streamlit as st

from components import plots, state
from components.export import export_buttons
from components.heatmap import number, shown_token, token_heatmap
from components.notes import describe, label, notes_editor
from components.tables import latent_table, show_table


def examples_block(examples: list, scale: float) -> None:
    for ex in examples:
        st.markdown(
            token_heatmap(ex.tokens, ex.acts, centre=ex.centre, scale=scale, label=f"{ex.activation:.2f}"),
            unsafe_allow_html=True,
        )


def card_header(card: Any, notes: Any) -> None:
    st.subheader(
        f"Latent {card.latent}" + (f" · {label(notes, card.latent)}" if label(notes, card.latent) else "")
    )
    if notes is not None and notes.note(card.latent):
        st.caption(notes.note(card.latent))
    cols = st.columns(5)
    cols[0].metric("frequency", f"{card.frequency:.2e}", help=f"fired on {card.count:,} indexed tokens")
    cols[1].metric("mean activation", f"{card.mean_activation:.3f}")
    cols[2].metric("max activation", f"{card.max_activation:.3f}")
    fmt = lambda v: "n/a" if math.isnan(v) else f"{v:.3f}"
    cols[3].metric("input score", fmt(card.input_score), help="share of top examples whose token is in T_i")
    cols[4].metric("output score", fmt(card.output_score), help="rank score x prob score (Arad et al.)")


def card_examples(card: Any) -> None:
    st.markdown("**Top activations** (one per sequence; outlined token = the example's position)")
    if not card.top_examples:
        st.caption("this latent never fired on the indexed text")
        return
    examples_block(card.top_examples, card.max_activation)
    bins = sorted({ex.bin for ex in card.quantile_examples}, reverse=True)
    for b in bins:
        lo, hi = card.quantile_bounds[b], card.quantile_bounds[b + 1]
        st.markdown(f"**Quantile bin {b}** (activation {lo:.2f} – {hi:.2f}, random firings)")
        examples_block([ex for ex in card.quantile_examples if ex.bin == b], card.max_activation)
    if card.quantile_repeats:
        st.caption(
            f"{card.quantile_repeats} quantile sample(s) left out: they are already among the top "
            f"activations (the latent fired on {card.count:,} indexed token(s) in all)."
        )
    if not bins and card.count <= len(card.top_examples):
        st.caption("Every firing on the indexed text is shown above: too rare for quantile samples.")


def token_rows(pairs: list[tuple[str, float]]) -> list[dict[str, Any]]:
    return [{"token": shown_token(t), "logit": v} for t, v in pairs]


def neighbour_rows(index: Any, notes: Any, neighbours: list[tuple[int, float]]) -> list[dict[str, Any]]:
    """Each neighbour with its label, what it promotes and its strongest example (not a bare id)."""
    rows = []
    for i, cos in neighbours:
        preview = index.preview(i)
        rows.append(
            {
                "latent": i,
                "cosine": cos,
                "label": label(notes, i),
                "promotes": " ".join(shown_token(t) for t in preview["promotes"]),
                "top example": preview["example"].replace("\n", "↵"),
            }
        )
    return rows


def card_tables(index: Any, notes: Any, card: Any) -> None:
    col_up, col_down = st.columns(2)
    col_up.markdown("**Promoted tokens** (logit +)")
    with col_up:
        show_table(token_rows(card.promoted), key="latents_promoted")
    col_down.markdown("**Suppressed tokens** (logit −)")
    with col_down:
        show_table(token_rows(card.suppressed), key="latents_suppressed")
    st.markdown("**Decoder neighbours** (click a row to open it; [token] = where it fired)")
    latent_table(neighbour_rows(index, notes, card.neighbours), key="latents_neighbours", full_height=True)


def card_plots(run: Any, card: Any) -> None:
    col_hist, col_density = st.columns(2)
    with col_hist:
        fig = plots.bars_from_histogram(
            card.histogram_edges, card.histogram_counts, "activation", title="Activation histogram (non-zero)"
        )
        st.plotly_chart(fig, key="latents_histogram")
    with col_density:
        counts, edges = state.index_log_density(run)
        fig = plots.bars_from_histogram(edges, counts, "log10 frequency", title="Density among all latents")
        position = math.log10(card.frequency) if card.frequency > 0 else edges[0]
        st.plotly_chart(
            plots.marker_on_histogram(fig, position, f"latent {card.latent}"), key="latents_density"
        )


def full_card(run: Any, index: Any, notes: Any, latent: int) -> None:
    card = index.latent(latent)
    card_header(card, notes)
    with st.expander("Label, note and export", expanded=False):
        notes_editor(run, notes, latent)
        title = f"{run.name} · {index.meta['hookpoint']}"
        export_buttons(card, notes, title=title, stem=f"{run.name.replace('/', '_')}_latent_{latent}")
    card_examples(card)
    card_plots(run, card)
    card_tables(index, notes, card)


def compact_card(index: Any, notes: Any, latent: int, *, n_examples: int = 3) -> None:
    """Name, headline numbers, promoted tokens and the strongest examples of `latent`."""
    card = index.latent(latent)
    st.markdown(f"**{describe(notes, latent)}**")
    st.caption(
        f"frequency {card.frequency:.2e} · max activation {number(card.max_activation)} · "
        f"output score {number(card.output_score)}"
    )
    promoted = " ".join(f"`{shown_token(t)}`" for t, _ in card.promoted[:6])
    st.markdown(f"promotes {promoted}" if promoted else "promotes —")
    examples_block(card.top_examples[:n_examples], card.max_activation)
