"""What the Steering page shows for a request: the two continuations and the next-token shift, the
coefficient sweep with the text generated at each coefficient, the steerability ranking, and the scores.
Tokens appear with visible whitespace ('␣the', '↵') everywhere.

    show_generation(run, request, describe=lambda i: f"latent {i}")
    show_sweep(run, request); show_steerability(run, request)
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from typing import Any

import streamlit as st

from components import plots, state
from components.heatmap import shown_token
from components.tables import show_table


def parse_numbers(text: str, kind: type) -> list:
    """Comma/space separated numbers; raises ValueError with the offending piece."""
    out = []
    for piece in [p for p in str(text).replace(",", " ").split() if p]:
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


def continuation(title: str, prompt: str, text: str) -> None:
    st.markdown(f"**{title}**")
    st.markdown(
        f'<div class="saekit-generation" style="font-family: monospace; white-space: pre-wrap;">'
        f"<b>{html.escape(prompt)}</b>{html.escape(text)}</div>",
        unsafe_allow_html=True,
    )


def show_generation(run: Any, request: dict, describe: Callable[[int], str]) -> None:
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
        named = [describe(i) for i in result.latents]
        if any("·" in name for name in named):  # some latent has a label: say what is being steered
            st.caption("; ".join(named))
    st.metric("KL(default ‖ steered) of the next token", f"{result.kl:.4f} nats")
    st.markdown("**Next-token distribution shift** at the prompt's last position (␣ = a space)")
    shift = [{**row, "token": shown_token(row["token"])} for row in result.next_token_shift]
    col_plot, col_table = st.columns(2)
    col_plot.plotly_chart(plots.probability_shift_figure(shift), key="steer_shift_plot")
    with col_table:
        show_table(shift, key="steer_shift_table", full_height=True)


def show_sweep(run: Any, request: dict) -> None:
    try:
        coefs = parse_numbers(request["steer_sweep_coefs"], float)
        latents = parse_numbers(request["steer_sweep_latents"], int)
    except ValueError as err:
        st.error(str(err))
        return
    if not coefs or not latents:
        st.error("give at least one latent and one coefficient to sweep")
        return
    target = request.get("steer_target") or None
    new_tokens = int(request.get("steer_sweep_new_tokens") or 0)
    rows = state.sweep_live(run, request["steer_prompt"], latents, coefs, target, new_tokens)
    if not rows:
        return
    st.plotly_chart(plots.sweep_figure(rows), key="steer_sweep_plot")
    shown = []
    for row in rows:
        out = {"coef": row["coef"], "KL": row["kl"], "top token": shown_token(row["top_token"])}
        out["top prob"] = row["top_prob"]
        if "target_prob" in row:
            out[f"p({shown_token(row['target_token'])})"] = row["target_prob"]
        if "text" in row:
            out["generated text (greedy)"] = row["text"].replace("\n", "↵")
        shown.append(out)
    show_table(shown, key="steer_sweep_table", full_height=True)


def show_steerability(run: Any, request: dict, describe: Callable[[int], str]) -> None:
    try:
        latents = parse_numbers(request["steer_rank_latents"], int)
        coef = float(request["steer_rank_coef"])
    except ValueError as err:
        st.error(str(err))
        return
    if not latents:
        st.error("give the latents to rank, e.g. `3, 17, 40`")
        return
    target = request.get("steer_rank_target") or None
    rows = state.steerability_live(run, request["steer_prompt"], latents, coef, target)
    if not rows:
        return
    shown = [
        {
            "latent": r["latent"],
            "name": describe(r["latent"]),
            "target": shown_token(r["target"]),
            "Δp(target)": r["target_gain"],
            "Δlog p(target)": r["logprob_gain"],
            "KL next token": r["kl"],
            "Δloss on text": r["ce_cost"],
            "perplexity ×": r["perplexity_ratio"],
            "efficiency": r["efficiency"],
        }
        for r in rows
    ]
    show_table(shown, key="steer_rank_table", full_height=True)
    st.caption(
        "Each latent steered alone at the coefficient. Target: the given token, else the latent's own top "
        "logit-lens token. Δloss: extra nats/token on a plain reference paragraph with every position "
        "steered. Efficiency = Δlog p(target) ÷ max(Δloss, 0.01), best first."
    )


def show_scores(run: Any, index: Any, latent: int) -> None:
    loaded = state.load_model_and_sae(run)
    if loaded is None:
        return
    if not 0 <= latent < loaded[1].d_sae:
        st.warning(f"latent {latent} is out of range: this SAE has {loaded[1].d_sae} latents")
        return
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
