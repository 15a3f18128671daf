"""Latents page: find latents — by id, by ranking, by a word they fire on or promote (any spacing or
case), by a phrase typed live, among the ones labelled — and read one latent's card. Every table row
opens its latent's card when clicked. Session keys are prefixed `latents_`.

    at = AppTest.from_file("app/streamlit_app.py").run(); at.switch_page("pages/latents.py").run()
    at.number_input(key="latents_id").set_value(7).run()
    at.session_state["latents_ranking_table"] = {"selection": {"rows": [2], "columns": []}}; at.run()
"""

import streamlit as st
from components import state
from components.heatmap import shown_token, token_heatmap
from components.latent_card import full_card
from components.notes import label, notes_of
from components.tables import apply_pending_latent, latent_table, show_table

from saekit.analysis import METRICS
from saekit.analysis.search import phrase_latents

MAX_ROWS = 50  # rows of a search result table (a common word can match hundreds of latents)

st.title("Latents")
run = state.selected_run()
if run is None:
    st.stop()
index = state.load_index(run)
notes = notes_of(run)
apply_pending_latent()


def latent_rows(ids: list[int], metrics: tuple[str, ...] = ("frequency", "max_activation")) -> list[dict]:
    """Table rows for latent ids: label, stored numbers, what each promotes and its strongest example."""
    rows = []
    for i in ids[:MAX_ROWS]:
        preview = index.preview(i)
        rows.append(
            {
                "latent": i,
                "label": label(notes, i),
                **{m: float(index.stats[m][i]) for m in metrics},
                "promotes": " ".join(shown_token(t) for t in preview["promotes"]),
                "top example": preview["example"].replace("\n", "↵"),
            }
        )
    return rows


def find_by_ranking() -> None:
    col_metric, col_order = st.columns([3, 1])
    metric = col_metric.selectbox("Sort by", METRICS, key="latents_sort_metric")
    smallest = col_order.toggle("Smallest first", key="latents_sort_ascending")
    ids = index.top_by(metric, n=25, descending=not smallest)
    st.caption("Click a row to open the latent's card.")
    latent_table(latent_rows(ids, tuple(METRICS)), key="latents_ranking_table")


def find_by_token(side: str, name: str, help_text: str) -> None:
    word = st.text_input(
        "Word or token (any leading space and case)", key=f"latents_{name}_token", help=help_text
    )
    if not word:
        return
    matches = index.matching_tokens(word)
    if not matches:
        st.warning(f"no vocabulary entry is {word!r} up to spaces and case; try a shorter piece of the word")
        return
    st.caption("Matched tokens: " + ", ".join(f"`{shown_token(s)}`" for _, s in matches))
    found = index.find_by_token_ids([i for i, _ in matches], side=side)
    if len(found) > MAX_ROWS:
        st.caption(f"{len(found)} latents; the first {MAX_ROWS} are shown")
    latent_table(latent_rows(found), key=f"latents_{name}_table")


def _encode() -> None:
    st.session_state["latents_encoded_text"] = st.session_state["latents_text"]


def find_by_text() -> None:
    st.text_area(
        "Phrase to encode live with the model and SAE",
        key="latents_text",
        value="The cat sat on the mat. The dog sat on the log.",
    )
    st.button("Encode", key="latents_encode", on_click=_encode)
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
        name = f"latent {latent}" + (f" · {label(notes, latent)}" if label(notes, latent) else "")
        st.markdown(token_heatmap(acts.tokens, column, label=name), unsafe_allow_html=True)
    max_act = index.stats["max_activation"] if index is not None else None
    rows = [
        {**row, "label": label(notes, row["latent"]), "token": shown_token(row["token"])}
        for row in phrase_latents(acts, max_act)
    ]
    if max_act is None:  # no index: no maximum to compare with
        rows = [{k: v for k, v in row.items() if k != "relative"} for row in rows]
    st.markdown(
        "**Latents most specific to this phrase** (relative = peak here ÷ the latent's max over the "
        "indexed text; click a row to open it)"
        if max_act is not None
        else "**Latents on this phrase** (no index: ranked by raw activation)"
    )
    latent_table(rows, key="latents_text_latents")
    per_token = [
        {"position": t, "token": shown_token(tok), "latents": ", ".join(f"{i} ({v:.2f})" for i, v in row)}
        for t, (tok, row) in enumerate(zip(acts.tokens, acts.per_token, strict=True))
    ]
    with st.expander("Strongest latents at every token"):
        show_table(per_token, key="latents_text_table")


def labelled_latents() -> None:
    labelled = notes.labelled() if notes else {}
    if not labelled:
        st.caption("No labels yet: open a latent and use 'Label, note and export' under its name.")
        return
    latent_table(latent_rows([i for i in labelled if i < index.d_sae]), key="latents_labelled_table")


# ---------------------------------------------------------------------------------------- layout

if index is None:
    st.markdown("Live encoding still works without an index:")
    find_by_text()
    st.stop()

summary = index.summary()
st.caption(
    f"{summary['d_sae']:,} latents at {summary['hookpoint']} of {summary['model_id']}, indexed on "
    f"{summary['tokens']:,} held-out tokens · dead {summary['dead_fraction']:.1%} · "
    f"dense {summary['dense_fraction']:.1%}"
)
tab_id, tab_rank, tab_token, tab_logit, tab_text, tab_notes = st.tabs(
    ["By id", "Ranking", "By token", "By promoted token", "Phrase", "Labelled"]
)
if st.session_state.get("latents_id", 0) >= index.d_sae:  # another run with fewer latents was picked
    st.session_state["latents_id"] = 0
with tab_id:
    st.number_input("Latent id", min_value=0, max_value=index.d_sae - 1, step=1, key="latents_id")
with tab_rank:
    find_by_ranking()
with tab_token:
    find_by_token("input", "token", "latents whose top examples peak on this token (' the', 'The', ...)")
with tab_logit:
    find_by_token("output", "logit", "latents whose decoder direction promotes this token (logit lens)")
with tab_text:
    find_by_text()
with tab_notes:
    labelled_latents()

st.divider()
full_card(run, index, notes, int(st.session_state.get("latents_id", 0)))
