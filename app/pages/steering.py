"""Steering page: boost latents at the SAE's hook point while the model generates, and compare with the
unsteered continuation (same seed), the next-token distribution shift, a coefficient sweep, and the
latent's input/output scores (Arad et al., algorithms.md §9). Session keys are prefixed `steer_`.

    at.switch_page("pages/steering.py").run()
    at.text_input(key="steer_latents").input("3").run(); at.button(key="steer_generate").click().run()
"""

import html
import math

import streamlit as st
from components import plots, state

st.title("Steering")
run = state.selected_run()
if run is None:
    st.stop()


def parse_numbers(text: str, kind: type) -> list:
    """Comma/space separated numbers; raises ValueError with the offending piece."""
    pieces = [p for p in text.replace(",", " ").split() if p]
    out = []
    for piece in pieces:
        try:
            out.append(kind(piece))
        except ValueError:
            raise ValueError(f"{piece!r} is not a valid {kind.__name__}") from None
    return out


def requested_latents(latents_text: str, coefs_text: str) -> dict[int, float] | None:
    """{latent: coefficient} from the two text boxes, or None after showing what is wrong."""
    try:
        latents = parse_numbers(latents_text, int)
        coefs = parse_numbers(coefs_text, float)
    except ValueError as err:
        st.error(f"{err}; write latents as `3, 17` and coefficients as `8` or `8, -4`")
        return None
    if not latents or not coefs or len(coefs) not in (1, len(latents)):
        st.error("give at least one latent, and either one coefficient or one per latent")
        return None
    return dict(zip(latents, coefs * len(latents) if len(coefs) == 1 else coefs, strict=True))


FORM_KEYS = (
    "steer_latents",
    "steer_coefs",
    "steer_prompt",
    "steer_max_new_tokens",
    "steer_temperature",
    "steer_seed",
)
SWEEP_KEYS = ("steer_sweep_latent", "steer_sweep_coefs", "steer_target")


def _submit(name: str, keys: tuple[str, ...]) -> None:
    # a snapshot of the inputs at click time: results stay on screen (and cached) across later reruns
    st.session_state[f"steer_{name}_request"] = {k: st.session_state.get(k) for k in keys}


def continuation(title: str, prompt: str, text: str) -> None:
    st.markdown(f"**{title}**")
    st.markdown(
        f'<div class="saekit-generation" style="font-family: monospace; white-space: pre-wrap;">'
        f"<b>{html.escape(prompt)}</b>{html.escape(text)}</div>",
        unsafe_allow_html=True,
    )


def show_generation(request: dict) -> None:
    latents = requested_latents(request["steer_latents"], request["steer_coefs"])
    if latents is None:
        return
    prompt = request["steer_prompt"]
    result = state.steer_live(
        run,
        prompt,
        latents,
        int(request["steer_max_new_tokens"]),
        int(request["steer_seed"]),
        float(request["steer_temperature"]),
    )
    if result is None:
        return
    left, right = st.columns(2)
    with left:
        continuation("Default", prompt, result.default_text)
    with right:
        label = ", ".join(f"{i}×{c:g}" for i, c in result.latents.items())
        continuation(f"Steered ({label})", prompt, result.steered_text)
    st.metric("KL(default ‖ steered) of the next token", f"{result.kl:.4f} nats")
    st.markdown("**Next-token distribution shift** at the prompt's last position")
    st.plotly_chart(plots.probability_shift_figure(result.next_token_shift), key="steer_shift_plot")
    st.dataframe(result.next_token_shift, hide_index=True, key="steer_shift_table")


def show_sweep(request: dict, prompt: str) -> None:
    try:
        coefs = parse_numbers(request["steer_sweep_coefs"], float)
    except ValueError as err:
        st.error(str(err))
        return
    latent = int(request["steer_sweep_latent"])
    rows = state.sweep_live(run, prompt, latent, coefs, request.get("steer_target") or None)
    if rows:
        st.plotly_chart(plots.sweep_figure(rows), key="steer_sweep_plot")
        st.dataframe(rows, hide_index=True, key="steer_sweep_table")


def show_scores(latent: int) -> None:
    loaded = state.load_model_and_sae(run)
    if loaded is None:
        return
    if not 0 <= latent < loaded[1].d_sae:
        st.warning(f"latent {latent} is out of range: this SAE has {loaded[1].d_sae} latents")
        return
    index = state.load_index(run) if run.has_index else None
    fmt = lambda v: "n/a" if v is None or math.isnan(v) else f"{v:.4f}"
    if index is not None:
        card = index.latent(latent)
        scores = {
            "input_score": card.input_score,
            "output_score": card.output_score,
            "rank_score": card.output_rank_score,
            "prob_score": card.output_prob_score,
        }
        source = "stored in the index"
    else:
        scores = state.output_score_live(run, latent) or {}
        source = "computed live (no index: no input score)"
    cols = st.columns(4)
    for col, name in zip(cols, ("input_score", "output_score", "rank_score", "prob_score"), strict=True):
        col.metric(name.replace("_", " "), fmt(scores.get(name)))
    st.caption(
        f"Scores of latent {latent}, {source}. Arad et al. suggest steering with high-output-score latents."
    )


# ---------------------------------------------------------------------------------------- layout

default_latent = str(st.session_state.get("latents_id", 0))
st.session_state.setdefault("steer_latents", default_latent)
st.session_state.setdefault("steer_coefs", "8")
st.session_state.setdefault("steer_prompt", "From my experience,")
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
        "Temperature (0 = greedy)", min_value=0.0, max_value=2.0, value=0.7, step=0.1, key="steer_temperature"
    )
    col_s.number_input("Seed", min_value=0, value=0, step=1, key="steer_seed")
    st.form_submit_button("Generate", key="steer_generate", on_click=_submit, args=("generate", FORM_KEYS))

generation = st.session_state.get("steer_generate_request")
if generation:
    show_generation(generation)

st.subheader("Coefficient sweep")
parsed = requested_latents(st.session_state["steer_latents"], st.session_state["steer_coefs"]) or {}
if parsed:
    ids = list(parsed)
    if st.session_state.get("steer_sweep_latent") not in ids:  # the latents box changed since last run
        st.session_state["steer_sweep_latent"] = ids[0]
    col_l, col_c, col_t = st.columns(3)
    col_l.selectbox("Latent", ids, key="steer_sweep_latent")
    col_c.text_input("Coefficients", value="0, 1, 2, 4, 8, 16", key="steer_sweep_coefs")
    col_t.text_input("Target token (optional, e.g. ' the')", value="", key="steer_target")
    st.button("Sweep", key="steer_sweep", on_click=_submit, args=("sweep", (*SWEEP_KEYS, "steer_prompt")))
    sweep = st.session_state.get("steer_sweep_request")
    if sweep:
        show_sweep(sweep, sweep["steer_prompt"])
    st.subheader("Scores")
    show_scores(int(st.session_state.get("steer_sweep_latent", ids[0])))
