"""Steering page: boost one or several latents at the SAE's hook point while the model generates, with
the latents' cards beside the controls; compare with the unsteered continuation (same seed), the
next-token shift, a coefficient sweep with the text generated at each coefficient, a steerability ranking
(target-token gain against KL and loss cost), and the input/output scores (Arad et al., algorithms.md §9).
Session keys are prefixed `steer_`.

    at.switch_page("pages/steering.py").run()
    at.text_input(key="steer_latents").input("3"); at.button(key="steer_generate").click().run()
"""

import streamlit as st
from components import state
from components.latent_card import compact_card
from components.notes import describe, notes_of
from components.steer_views import (
    parse_numbers,
    requested_latents,
    show_generation,
    show_scores,
    show_steerability,
    show_sweep,
)

st.title("Steering")
run = state.selected_run()
if run is None:
    st.stop()
index = state.load_index(run) if run.has_index else None
notes = notes_of(run)
name_of = lambda latent: describe(notes, latent)

FORM_KEYS = (
    "steer_latents",
    "steer_coefs",
    "steer_prompt",
    "steer_max_new_tokens",
    "steer_temperature",
    "steer_seed",
)
SWEEP_KEYS = ("steer_sweep_latents", "steer_sweep_coefs", "steer_target", "steer_sweep_new_tokens")
RANK_KEYS = ("steer_rank_latents", "steer_rank_coef", "steer_rank_target")


def _submit(name: str, keys: tuple[str, ...]) -> None:
    # a snapshot of the inputs at click time: results stay on screen (and cached) across later reruns
    st.session_state[f"steer_{name}_request"] = {k: st.session_state.get(k) for k in (*keys, "steer_prompt")}


def starting_latent() -> int:
    """The latent open on the Latents page, else the index's highest output score (the steerable kind)."""
    if "latents_id" in st.session_state:
        return int(st.session_state["latents_id"])
    best = index.top_by("output_score", n=1) if index is not None else []
    return best[0] if best else 0


def controls() -> None:
    with st.form("steer_form"):
        col_a, col_b = st.columns(2)
        col_a.text_input("Latents (comma-separated ids)", key="steer_latents")
        col_b.text_input(
            "Coefficients (one, or one per latent; boost = coef × max activation)", key="steer_coefs"
        )
        st.text_input("Prompt", key="steer_prompt")
        col_n, col_t, col_s = st.columns(3)
        col_n.number_input("New tokens", min_value=1, max_value=64, value=12, key="steer_max_new_tokens")
        col_t.number_input(
            "Temperature (0 = greedy)",
            min_value=0.0,
            max_value=2.0,
            value=0.7,
            step=0.1,
            key="steer_temperature",
        )
        col_s.number_input("Seed", min_value=0, value=0, step=1, key="steer_seed")
        st.form_submit_button(
            "Generate", key="steer_generate", on_click=_submit, args=("generate", FORM_KEYS)
        )


def cards_beside(latents: list[int]) -> None:
    """The card of every latent in the box (tabs when several): what is being steered, at a glance."""
    if index is None:
        st.info(f"No index: build one with `saekit index {run.path}` to see each latent's card here.")
        return
    shown = [i for i in latents if 0 <= i < index.d_sae][:6]
    if not shown:
        st.caption("no latent in range to show")
        return
    for tab, latent in zip(st.tabs([str(i) for i in shown]), shown, strict=True):
        with tab:
            compact_card(index, notes, latent)


def sweep_controls(default_latents: str) -> None:
    if st.session_state.get("steer_sweep_follows") != default_latents:  # the latents box changed
        st.session_state["steer_sweep_follows"] = default_latents
        st.session_state["steer_sweep_latents"] = default_latents
    col_l, col_c, col_t, col_n = st.columns([2, 2, 2, 1])
    col_l.text_input("Latents (steered together)", key="steer_sweep_latents")
    col_c.text_input("Coefficients", value="0, 2, 4, 8, 16", key="steer_sweep_coefs")
    col_t.text_input("Target token (optional, e.g. ' the')", value="", key="steer_target")
    col_n.number_input("New tokens", min_value=0, max_value=32, value=8, key="steer_sweep_new_tokens")
    st.button("Sweep", key="steer_sweep", on_click=_submit, args=("sweep", SWEEP_KEYS))
    if request := st.session_state.get("steer_sweep_request"):
        show_sweep(run, request)


def ranking_controls(default_latents: str) -> None:
    best = index.top_by("output_score", n=8) if index is not None else []
    st.session_state.setdefault("steer_rank_latents", ", ".join(map(str, best)) or default_latents)
    col_l, col_c, col_t = st.columns([3, 1, 2])
    col_l.text_input(
        "Latents to rank", key="steer_rank_latents", help="default: the index's top output scores"
    )
    col_c.number_input("Coefficient", value=8.0, step=1.0, key="steer_rank_coef")
    col_t.text_input(
        "Target token (optional; default: each latent's top promoted token)", key="steer_rank_target"
    )
    st.button("Rank by steerability", key="steer_rank", on_click=_submit, args=("rank", RANK_KEYS))
    if request := st.session_state.get("steer_rank_request"):
        show_steerability(run, request, name_of)


# ---------------------------------------------------------------------------------------- layout

st.session_state.setdefault("steer_latents", str(starting_latent()))
st.session_state.setdefault("steer_coefs", "8")
st.session_state.setdefault("steer_prompt", "From my experience,")
col_controls, col_cards = st.columns([3, 2])
with col_controls:
    controls()
try:
    in_box = parse_numbers(st.session_state["steer_latents"], int)
except ValueError:
    in_box = []
with col_cards:
    cards_beside(in_box)

if generation := st.session_state.get("steer_generate_request"):
    show_generation(run, generation, name_of)

parsed = requested_latents(st.session_state["steer_latents"], st.session_state["steer_coefs"]) or {}
if parsed:
    box = ", ".join(map(str, parsed))
    st.subheader("Coefficient sweep")
    sweep_controls(box)
    st.subheader("Steerability ranking")
    ranking_controls(box)
    st.subheader("Scores")
    for latent in list(parsed)[:4]:
        show_scores(run, index, latent)
