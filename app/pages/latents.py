"""Latents page: find latents (by id, by ranking, by a token they fire on, by a token they promote, or by
encoding typed text live) and read one latent's card: example contexts as heat-maps, activation
histogram, logit effects, decoder neighbours, density. Session keys are prefixed `latents_`.

    at = AppTest.from_file("app/streamlit_app.py").run(); at.switch_page("pages/latents.py").run()
    at.number_input(key="latents_id").set_value(7).run()
"""

import math

import streamlit as st
from components import plots, state
from components.heatmap import token_heatmap

from saekit.analysis import METRICS

st.title("Latents")
run = state.selected_run()
if run is None:
    st.stop()
index = state.load_index(run)


def _choose(latent: int) -> None:
    st.session_state["latents_id"] = int(latent)


def candidate_picker(candidates: list[int], name: str) -> None:
    """A selectbox of latent ids plus a button that opens the chosen one below."""
    if not candidates:
        st.caption("no matching latents")
        return
    col_pick, col_go = st.columns([3, 1])
    pick = col_pick.selectbox(f"{len(candidates)} latents", candidates, key=f"latents_{name}_pick")
    col_go.button("Show latent", key=f"latents_{name}_show", on_click=_choose, args=(pick,))


def ranking_table(ids: list[int]) -> list[dict]:
    """Stored per-latent numbers for a list of ids (rows of the ranking table)."""
    return [{"latent": i, **{m: float(index.stats[m][i]) for m in METRICS}} for i in ids]


def find_by_ranking() -> None:
    metric = st.selectbox("Sort by", METRICS, key="latents_sort_metric")
    smallest = st.toggle("Smallest first", key="latents_sort_ascending")
    ids = index.top_by(metric, n=25, descending=not smallest)
    st.dataframe(ranking_table(ids), hide_index=True, key="latents_ranking_table")
    candidate_picker(ids, "ranking")


def find_by_token(side: str, name: str, help_text: str) -> None:
    token = st.text_input(
        "Token (exact, with its leading space)", key=f"latents_{name}_token", help=help_text
    )
    if not token:
        return
    if index.token_id(token) is None:
        spaced = f" {token}" if not token.startswith(" ") else None
        hint = f" — did you mean {spaced!r}?" if spaced and index.token_id(spaced) is not None else ""
        st.warning(f"no vocabulary entry is exactly {token!r}{hint}")
        return
    candidate_picker(index.find_by_token(token, side=side), name)


def find_by_text() -> None:
    st.text_area(
        "Text to encode live with the model and SAE",
        key="latents_text",
        value="The cat sat on the mat. The dog sat on the log.",
    )
    st.button(
        "Encode",
        key="latents_encode",
        on_click=lambda: st.session_state.update(latents_encoded_text=st.session_state["latents_text"]),
    )
    encoded_text = st.session_state.get("latents_encoded_text")
    if not encoded_text:
        return
    acts = state.encode_live(run, encoded_text)
    if acts is None:
        return
    if not acts.latents:
        st.info("no latent fired on this text")
        return
    st.markdown("**Strongest latents on this text** (shade = activation at each token; BOS excluded)")
    for j, latent in enumerate(acts.latents[:8]):
        column = acts.values[:, j].tolist()
        st.markdown(token_heatmap(acts.tokens, column, label=f"latent {latent}"), unsafe_allow_html=True)
    per_token = [
        {"position": t, "token": repr(tok), "latents": ", ".join(f"{i} ({v:.2f})" for i, v in row)}
        for t, (tok, row) in enumerate(zip(acts.tokens, acts.per_token, strict=True))
    ]
    st.dataframe(per_token, hide_index=True, key="latents_text_table")
    candidate_picker(acts.latents, "text")


# ---------------------------------------------------------------------------------------- the card


def examples_block(examples: list, scale: float) -> None:
    for ex in examples:
        label = f"{ex.activation:.2f}"
        st.markdown(
            token_heatmap(ex.tokens, ex.acts, centre=ex.centre, scale=scale, label=label),
            unsafe_allow_html=True,
        )


def card_header(card) -> None:
    st.subheader(f"Latent {card.latent}")
    cols = st.columns(5)
    cols[0].metric("frequency", f"{card.frequency:.2e}", help=f"fired on {card.count} indexed tokens")
    cols[1].metric("mean activation", f"{card.mean_activation:.3f}")
    cols[2].metric("max activation", f"{card.max_activation:.3f}")
    fmt = lambda v: "n/a" if math.isnan(v) else f"{v:.3f}"
    cols[3].metric("input score", fmt(card.input_score), help="share of top examples whose token is in T_i")
    cols[4].metric("output score", fmt(card.output_score), help="rank score x prob score (Arad et al.)")


def card_examples(card) -> None:
    st.markdown("**Top activations** (one per sequence; outlined token = the example's position)")
    if not card.top_examples:
        st.caption("this latent never fired on the indexed text")
    examples_block(card.top_examples, card.max_activation)
    bins = sorted({ex.bin for ex in card.quantile_examples})
    for b in reversed(bins):
        lo, hi = card.quantile_bounds[b], card.quantile_bounds[b + 1]
        st.markdown(f"**Quantile bin {b}** (activation {lo:.2f} – {hi:.2f})")
        examples_block([ex for ex in card.quantile_examples if ex.bin == b], card.max_activation)


def card_tables(card) -> None:
    promoted = [{"token": repr(t), "logit": v} for t, v in card.promoted]
    suppressed = [{"token": repr(t), "logit": v} for t, v in card.suppressed]
    col_up, col_down, col_nb = st.columns(3)
    col_up.markdown("**Promoted tokens** (logit +)")
    col_up.dataframe(promoted, hide_index=True, key="latents_promoted")
    col_down.markdown("**Suppressed tokens** (logit −)")
    col_down.dataframe(suppressed, hide_index=True, key="latents_suppressed")
    col_nb.markdown("**Decoder neighbours**")
    col_nb.dataframe(
        [{"latent": i, "cosine": c} for i, c in card.neighbours], hide_index=True, key="latents_neighbours"
    )
    candidate_picker([i for i, _ in card.neighbours], "neighbour")


def card_plots(card) -> None:
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


def latent_card(latent: int) -> None:
    card = index.latent(latent)
    card_header(card)
    card_examples(card)
    card_plots(card)
    card_tables(card)


# ---------------------------------------------------------------------------------------- layout

if index is None:
    st.markdown("Live encoding still works without an index:")
    find_by_text()
    st.stop()

summary = index.summary()
st.caption(
    f"{summary['d_sae']} latents at {summary['hookpoint']} of {summary['model_id']}, indexed on "
    f"{summary['tokens']} held-out tokens · dead {summary['dead_fraction']:.1%} · "
    f"dense {summary['dense_fraction']:.1%}"
)
tab_id, tab_rank, tab_token, tab_logit, tab_text = st.tabs(
    ["By id", "Ranking", "By token", "By top logit", "Typed text"]
)
if st.session_state.get("latents_id", 0) >= index.d_sae:  # another run with fewer latents was picked
    st.session_state["latents_id"] = 0
with tab_id:
    st.number_input("Latent id", min_value=0, max_value=index.d_sae - 1, step=1, key="latents_id")
with tab_rank:
    find_by_ranking()
with tab_token:
    find_by_token("input", "token", "latents whose top examples peak on this token")
with tab_logit:
    find_by_token("output", "logit", "latents whose decoder direction promotes this token most")
with tab_text:
    find_by_text()

st.divider()
latent_card(int(st.session_state.get("latents_id", 0)))
