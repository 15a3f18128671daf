"""Dead latents page: how the dead (and dense) fraction evolved in training, the log-density histogram of
the evaluation, when each latent last fired, where dead latents point (decoder geometry), their encoder
biases and pre-activations against live latents, and a JSON export. Session keys are prefixed `dead_`.

    at.switch_page("pages/dead_latents.py").run()
    at.radio(key="dead_source").set_value("index: never fired on held-out text").run()
"""

import json

import streamlit as st
import torch
from components import plots, state

from saekit.analysis.dead import (
    dead_latent_geometry,
    dead_report,
    preactivations_by_status,
    run_activation_sample,
    run_timeline,
)

SOURCE_TRACKER = "training tracker (last checkpoint)"
SOURCE_INDEX = "index: never fired on held-out text"

st.title("Dead latents")
run = state.selected_run()
if run is None:
    st.stop()


@st.cache_data(show_spinner=False, max_entries=16)
def timeline_of(run_path: str, stamp: float):
    return run_timeline(run_path)


@st.cache_data(show_spinner="Reading an activation sample…", max_entries=4)
def activation_sample(run_path: str):
    return run_activation_sample(run_path, n=4096)


@st.cache_data(show_spinner="Measuring dead-latent geometry…", max_entries=16)
def geometry_of(run_path: str, stamp: float, dead_ids: tuple[int, ...]):
    sae = state.load_run_sae_cached(run_path, stamp)
    dead_mask = torch.zeros(sae.d_sae, dtype=torch.bool)
    dead_mask[list(dead_ids)] = True
    acts = activation_sample(run_path)
    geometry = dead_latent_geometry(sae.W_dec, dead_mask, acts)
    preacts = preactivations_by_status(sae, acts, dead_mask) if acts is not None else None
    return geometry, preacts


def training_curves() -> None:
    st.subheader("Over training")
    rows = state.metrics_of(run)
    keys = ["dead_fraction", "dense_fraction", "n_dead", "revived"]
    if not rows:
        st.info("metrics.jsonl is empty or missing.")
        return
    st.plotly_chart(plots.curves_figure(rows, keys), key="dead_curves")
    if any("dense_fraction" in r for r in rows):
        st.caption(
            "Per log window: dense = share of latents firing on more than 10% of the window's tokens; "
            "revived = latents dead when the window began that fired in it."
        )
    else:
        st.caption("This run predates saekit's dense-fraction log; only the dead fraction is shown.")


def density_histogram() -> None:
    st.subheader("Log-density histogram (eval.json)")
    result = state.eval_of(run)
    parts = [p for p in ("heldout", "cached") if ((result or {}).get(p) or {}).get("log10_density_histogram")]
    if not parts:
        st.info(f"No density histogram: run `saekit eval {run.path}` first.")
        return
    part = st.radio("Rows", parts, horizontal=True, key="dead_eval_part")
    stats = result[part]
    hist = stats["log10_density_histogram"]
    fig = plots.bars_from_histogram(hist["edges"], hist["counts"], "log10(frequency + 1e-10)")
    st.plotly_chart(fig, key="dead_density_plot")
    st.caption(
        f"dead {stats.get('dead_fraction', 0):.2%} (no firing over {stats.get('rows', '?')} rows) · dense "
        f"{stats.get('dense_fraction', 0):.2%} (frequency > {stats.get('dense_threshold')}) · dead latents "
        "sit in the leftmost bin"
    )


def dead_mask_choice(timeline):
    """The dead-latent definition picked by the user among those this run supports, as a bool mask."""
    options = ([SOURCE_TRACKER] if timeline is not None else []) + ([SOURCE_INDEX] if run.has_index else [])
    if not options:
        st.info(
            "Per-latent status needs a training checkpoint (dead tracker) or a latent index "
            f"(`saekit index {run.path}`)."
        )
        return None, None
    source = st.radio("Dead latents according to", options, key="dead_source")
    if source == SOURCE_TRACKER:
        return timeline.dead, source
    index = state.load_index(run)
    return (index.densities() == 0), source


def timeline_section(timeline) -> None:
    st.subheader("When latents last fired")
    if timeline is None:
        st.info("No checkpoint with a dead-latent tracker (only intermediate checkpoints keep one).")
        return
    cols = st.columns(3)
    cols[0].metric("checkpoint step", timeline.step)
    cols[1].metric("tokens seen", f"{timeline.tokens:,}")
    cols[2].metric("dead window (tokens)", f"{timeline.dead_tokens:,}")
    groups = {
        "dead": timeline.last_fired_token[timeline.dead].tolist(),
        "live": timeline.last_fired_token[~timeline.dead].tolist(),
    }
    st.plotly_chart(plots.overlaid_histograms(groups, "last fired at token"), key="dead_last_fired")
    dead_ids = timeline.dead.nonzero().flatten().tolist()
    rows = [
        {
            "latent": i,
            "last fired (token)": int(timeline.last_fired_token[i]),
            "died at (token)": int(timeline.died_at_token[i]),
        }
        for i in dead_ids[:500]
    ]
    if rows:
        st.dataframe(rows, hide_index=True, key="dead_timeline_table")
    else:
        st.caption("No latent is dead at this checkpoint.")
    st.caption("Revivals are not recorded by the trainer: a latent that died and fired again shows as live.")


def geometry_section(geometry, preacts) -> None:
    st.subheader("Geometry of dead latents")
    dead, live = geometry.dead, ~geometry.dead
    cos = {"dead": geometry.max_cos_to_live[dead].tolist(), "live": geometry.max_cos_to_live[live].tolist()}
    col_cos, col_sub = st.columns(2)
    col_cos.plotly_chart(
        plots.overlaid_histograms(cos, "max decoder cosine to a live latent"), key="dead_cosine_plot"
    )
    if geometry.subspace_share is None:
        col_sub.info("No activation sample (live-trained run or missing cache): subspace share skipped.")
    else:
        share = {
            "dead": geometry.subspace_share[dead].tolist(),
            "live": geometry.subspace_share[live].tolist(),
        }
        col_sub.plotly_chart(
            plots.overlaid_histograms(share, "share of direction in the data subspace"),
            key="dead_subspace_plot",
        )
        col_sub.caption(
            f"Subspace: top {geometry.subspace_rank} principal directions of the activations "
            f"({geometry.subspace_variance:.1%} of the variance)."
        )
    if preacts is not None:
        col_b, col_h = st.columns(2)
        bias = {"dead": preacts["dead_b_enc"].tolist(), "live": preacts["live_b_enc"].tolist()}
        col_b.plotly_chart(plots.overlaid_histograms(bias, "encoder bias b_enc"), key="dead_bias_plot")
        pre = {"dead": preacts["dead_preacts"].tolist(), "live": preacts["live_preacts"].tolist()}
        col_h.plotly_chart(plots.overlaid_histograms(pre, "pre-activation"), key="dead_preact_plot")


# ---------------------------------------------------------------------------------------- layout

training_curves()
density_histogram()
timeline = timeline_of(str(run.path), state.checkpoint_stamp(run))
timeline_section(timeline)
st.subheader("Per-latent status")
dead_mask, source = dead_mask_choice(timeline)
if dead_mask is not None:
    n_dead = int(dead_mask.sum())
    st.markdown(f"**{n_dead} dead latents** of {dead_mask.numel()} ({n_dead / dead_mask.numel():.2%})")
    geometry, preacts = geometry_of(
        str(run.path), state.sae_stamp(run), tuple(dead_mask.nonzero().flatten().tolist())
    )
    geometry_section(geometry, preacts)
    report = dead_report(dead_mask, source=source, timeline=timeline, geometry=geometry)
    st.download_button(
        "Download dead-latent report (JSON)",
        data=json.dumps(report, indent=2),
        file_name=f"{run.name.replace('/', '_')}_dead_latents.json",
        mime="application/json",
        key="dead_download",
    )
