"""`saekit index RUN`: build the latent index of a trained run into `<run>/index/` (see `format.py`).

One streaming pass over held-out text (the run's model and corpus, skipping the sequences the training
cache consumed) collects per-latent statistics and examples; then weight-only passes add logit effects,
decoder neighbours and the input/output scores of algorithms.md §9. The SAE runs in inference mode, and
special positions (BOS/EOS) are neither counted nor used as examples.

Examples. An example is one (sequence, position) with a window of `before` tokens before and `after`
after, carrying the token ids and that latent's activation at every window token. A latent's *top
examples* are the sequences where its maximum activation is largest (one example per sequence, centred on
that maximum, so near-duplicate windows from one passage do not crowd the list). Its *quantile examples*
come from a uniform random sample of firing positions (at most one per sequence), binned by the latent's
activation quantiles (`quantile_bins` equal-mass bins of its non-zero activations), `examples_per_bin`
per bin. Activations are the SAE's latent values (inputs scaled by `act_scale`).

    path = build_index("runs/demo/topk", num_sequences=256)       # -> runs/demo/topk/index
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

import saekit
from saekit.analysis.assemble import assemble_arrays, decoded_vocab_for, write_index
from saekit.analysis.format import HISTOGRAM_BINS, INDEX_FORMAT_VERSION
from saekit.analysis.scan import IndexSettings, ScanResult, scan_activations
from saekit.config import EvalConfig, IndexConfig
from saekit.errors import ConfigError, check_directory_target
from saekit.rundir import RunDir

logger = logging.getLogger(__name__)


def build_index(
    run_dir: str | Path, config: IndexConfig | None = None, *, model: Any = None, **keys: Any
) -> Path:
    """Build `<run_dir>/index/` (replacing an older one atomically) and return its path.

    `config` (default: `IndexConfig()`) with `keys` replacing its fields; the keys are those of
    `saekit index --help`. `model`: the run's model, already loaded (default: loaded by name).
    """
    cfg = _index_config(config, keys)
    settings = index_settings(cfg)
    progress = cfg.progress
    run_dir = Path(run_dir)
    run = open_run(run_dir, settings, model)
    check_directory_target(RunDir(run_dir).index_dir, "run")  # before the scan, not at its end
    start = time.perf_counter()
    scan = scan_activations(run.model, run.sae, run.tokens, settings, progress=progress)
    scan_seconds = time.perf_counter() - start
    logger.info(
        "scanned %d tokens in %.1f s (%.0f tokens/s)",
        scan.positions,
        scan_seconds,
        scan.positions / max(scan_seconds, 1e-9),
    )
    timings = {"scan_seconds": scan_seconds}
    arrays = assemble_arrays(run.model, run.sae, scan, settings, progress=progress, timings=timings)
    meta = _meta(run, scan, settings, timings, time.perf_counter() - start)
    path = write_index(RunDir(run_dir).index_dir, arrays, meta, decoded_vocab_for(run.model, arrays))
    logger.info(
        "index written to %s (%.0f tokens/s over the scan, %.1f s in all)",
        path,
        meta["throughput"]["scan_tokens_per_s"],
        meta["throughput"]["total_seconds"],
    )
    return path


def index_settings(cfg: IndexConfig) -> IndexSettings:
    """The settings stored in index.json, from the stage config."""
    return IndexSettings(
        num_sequences=cfg.num_sequences,
        context_length=cfg.context_length,
        batch_size=cfg.batch_size,
        top_examples=cfg.top_examples,
        quantile_bins=cfg.quantile_bins,
        examples_per_bin=cfg.examples_per_bin,
        context_window=(int(cfg.context_window[0]), int(cfg.context_window[1])),
        logit_lens_top_k=cfg.logit_lens_top_k,
        prompts=tuple(cfg.prompts),
        output_amp=float(cfg.output_amp),
        min_input_examples=cfg.min_input_examples,
        output_scores=cfg.compute_output_scores,
        seed=cfg.seed,
        output_batch_size=cfg.output_batch_size,
    )


@dataclass
class IndexedRun:
    """What an index is built from: the run's SAE (eval mode), its model, and the held-out tokens."""

    run_dir: Path
    checkpoint: Path
    sae: Any
    model: Any
    plan: Any
    tokens: Int[Tensor, "n seq"]


def open_run(run_dir: Path, settings: IndexSettings, model: Any = None) -> IndexedRun:
    """Load the SAE and (unless given) the model, and cut the held-out text, as `saekit eval` does."""
    from saekit.eval.evaluate import check_model_fits_sae, heldout_tokens, plan_heldout

    run = RunDir(run_dir)
    train_cfg = run.load_config()
    checkpoint = run.sae_dir()
    sae = run.load_sae()
    sae.eval()  # batch-coupled methods switch to their per-token threshold form
    plan = plan_heldout(train_cfg, _manifest(train_cfg), EvalConfig(context_length=settings.context_length))
    if model is None:
        from saekit.models import load_model

        model = load_model(plan.model)
    _check_model(model, sae)
    check_model_fits_sae(model, sae, plan.context_length)
    sae = sae.to(_device_of(model))
    tokens = heldout_tokens(model, plan, settings.num_sequences)
    logger.info(
        "indexing %d latents of %s on %d held-out sequences x %d tokens",
        sae.d_sae,
        checkpoint,
        tokens.shape[0],
        tokens.shape[1],
    )
    return IndexedRun(run_dir, checkpoint, sae, model, plan, tokens)


def _meta(
    run: IndexedRun, scan: ScanResult, settings: IndexSettings, timings: dict[str, float], total_s: float
) -> dict:
    from saekit.models import model_id

    sae, plan, tokens = run.sae, run.plan, run.tokens
    return {
        "format_version": INDEX_FORMAT_VERSION,
        "saekit_version": saekit.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run_dir": str(run.run_dir),
        "checkpoint": str(run.checkpoint),
        "model_id": model_id(run.model),
        "hookpoint": sae.hookpoint,
        "sae": {
            "method": sae.cfg.method,
            "k": sae.cfg.param("k"),
            "d_in": sae.d_in,
            "d_sae": sae.d_sae,
            "act_scale": float(sae.act_scale),
        },
        "d_sae": sae.d_sae,
        "text": {
            "corpus": plan.corpus,
            "context_length": int(tokens.shape[1]),
            "sequences": int(tokens.shape[0]),
            "skipped_sequences": plan.skip_sequences,
            "skip_reason": plan.skip_reason,
        },
        "tokens": scan.stats.tokens,
        "positions": scan.positions,
        "mean_l0": scan.stats.nonzeros / max(scan.stats.tokens, 1),
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.__dict__.items()},
        "definitions": {
            "activation": "SAE latent value on inputs scaled by act_scale, inference-mode selection",
            "excluded_positions": "special tokens (BOS/EOS/PAD): not counted, never an example",
            "top_examples": "one per sequence, centred on the latent's maximum in it, by that maximum",
            "quantile_examples": "random firing positions (<= 1 per sequence) binned by activation quantiles",
            "quantiles": f"of non-zero activations, from a {scan.stats.bins}-bin streaming histogram",
            "histogram": f"{HISTOGRAM_BINS} equal bins over [0, max_activation]",
            "input_score": "share of top examples whose max token is in the logit-lens top-k (NaN: too few)",
            "output_score": "rank_score * prob_score with amp*max boost at the prompt's last position "
            "(prefix shared: exact up to fp32 summation order)",
        },
        "throughput": {
            **timings,
            "scan_tokens_per_s": scan.positions / max(timings["scan_seconds"], 1e-9),
            "total_seconds": total_s,
        },
    }


def _index_config(config: IndexConfig | None, keys: dict[str, Any]) -> IndexConfig:
    """`config` with `keys` replaced; an unknown key is a one-line error naming the valid ones."""
    config = config or IndexConfig()
    known = {f.name for f in dataclasses.fields(IndexConfig)}
    unknown = sorted(set(keys) - known)
    if unknown:
        raise ConfigError(
            f"build_index: unknown key(s) {unknown}; valid keys: {', '.join(sorted(known))} "
            "(see `saekit index --help`)"
        )
    return dataclasses.replace(config, **keys)


def _manifest(train_cfg: Any) -> dict[str, Any] | None:
    if train_cfg.cache_dir is None:
        return None
    from saekit.activations import open_cache

    return open_cache(train_cfg.cache_dir, train_cfg.hookpoint).manifest


def _check_model(model: Any, sae: Any) -> None:
    from saekit.models import model_id

    if sae.model_id and model_id(model) != sae.model_id:
        logger.warning("SAE was trained on %s but the index uses %s", sae.model_id, model_id(model))


def _device_of(model: Any) -> torch.device:
    return next(model.parameters()).device
