"""`saekit eval RUN`: score a trained SAE and write `<run>/eval.json`.

Two kinds of numbers, kept apart in the output:
- ``cached``: FVU / L0 / density on the *last* `max_eval_rows` rows of the training cache. These rows were
  also seen in training, so they measure fit, not generalisation.
- ``heldout``: the same reconstruction metrics plus spliced-model CE/KL on `num_sequences` sequences of
  text the SAE never saw: for the embedded corpus its held-out document split ("embedded:heldout"),
  otherwise the corpus from the cache manifest, skipping the sequences collection consumed.

    result = evaluate_run("runs/topk", EvalConfig(num_sequences=32))
    logger.info("\\n%s", format_eval_table(result))
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from saekit.config import HELDOUT_CORPUS, EvalConfig, TrainConfig, to_dict
from saekit.config_checks import require_device
from saekit.errors import CorpusError, DataError, RunDirError, check_directory_target
from saekit.eval.cached_rows import cached_row_metrics, iter_last_rows
from saekit.eval.calibrate import calibrate_thresholds_, save_calibrated, target_l0
from saekit.eval.extras import extra_metrics
from saekit.eval.grad_modes import SELECTION_MODE_METRICS
from saekit.eval.levels import level_metrics, level_report
from saekit.eval.memo import ForwardMemo, rows_source
from saekit.eval.metrics import ReconstructionStats
from saekit.eval.splice import ABLATIONS, EXCLUDED_POSITIONS, spliced_losses
from saekit.eval.text_rows import take_rows
from saekit.io import atomic_write_json
from saekit.rundir import RunDir
from saekit.sae import get_method

logger = logging.getLogger(__name__)

EVAL_FORMAT_VERSION = 1
TRAIN_SPLIT_CORPUS = "embedded"
"""Corpus name of the embedded training split; its evaluation text is HELDOUT_CORPUS."""
DEFAULT_EVAL = EvalConfig()  # frozen, so one shared default instance is safe


@dataclass(frozen=True)
class HeldOutText:
    """Where evaluation text comes from and how much of the corpus start to skip."""

    model: str
    corpus: str
    text_field: str
    context_length: int
    skip_sequences: int
    skip_reason: str


# ---------------------------------------------------------------------------------------- held-out text


def plan_heldout(train_cfg: TrainConfig, manifest: dict[str, Any] | None, cfg: EvalConfig) -> HeldOutText:
    """Model, corpus and skip count for held-out text: cfg overrides, else what training used."""
    if manifest is not None:
        # collect_config holds the names `load_model` / `iter_texts` were given; model_id is a fallback
        collected = manifest.get("collect_config") or {}
        model = collected.get("model") or manifest.get("model_id")
        corpus = collected.get("corpus") or manifest.get("corpus")
        ctx = manifest.get("context_length") or collected.get("context_length")
        text_field = collected.get("text_field") or manifest.get("text_field") or "text"
        consumed, reason = None, ""  # read below, only when the eval text comes from the same corpus
    elif train_cfg.live is not None:
        live = train_cfg.live
        model, corpus, ctx, text_field = live.model, live.corpus, live.context_length, live.text_field
        # live runs record no final read position. Upper-bound it: training rows plus the stream's shuffle
        # buffer (8 batches by default), at the fewest rows a sequence can give (BOS and, with gradients,
        # the last position dropped), plus one forward batch of sequences
        rows = train_cfg.total_tokens + 9 * train_cfg.batch_size
        consumed = live.skip_sequences + math.ceil(rows / max(ctx - 2, 1)) + live.batch_size
        reason = "estimated from live training settings (total_tokens, context_length)"
        logger.warning(
            "live-trained run: skipping an estimated %d sequences of %s for held-out text", consumed, corpus
        )
    else:
        raise RunDirError(
            "the run's config has neither cache_dir nor live; cannot tell what it was trained on"
        )
    if cfg.corpus is None and corpus == TRAIN_SPLIT_CORPUS:
        # the embedded corpus's held-out documents (split by source text) are never read by collection
        corpus, skip, why = HELDOUT_CORPUS, 0, "held-out document split of the embedded corpus"
    elif cfg.corpus is not None and cfg.corpus != corpus:
        skip, why = 0, "eval corpus differs from the training corpus"
    elif consumed is None:
        skip, why = _sequences_used(manifest)
    else:
        skip, why = consumed, reason
    chosen_corpus = cfg.corpus or corpus
    if chosen_corpus is None or (cfg.model or model) is None:
        raise CorpusError("the cache manifest records no corpus/model; pass corpus=... and model=... to eval")
    return HeldOutText(
        model=cfg.model or model,
        corpus=chosen_corpus,
        text_field=text_field,
        context_length=int(cfg.context_length or ctx),
        skip_sequences=skip,
        skip_reason=why,
    )


def _sequences_used(manifest: dict[str, Any]) -> tuple[int, str]:
    """Absolute index of the first corpus sequence collection did not read (its skip included)."""
    if manifest.get("next_sequence") is not None:
        return int(manifest["next_sequence"]), "next_sequence recorded in the cache manifest"
    if manifest.get("sequences_consumed") is not None:
        skipped = int(manifest.get("skip_sequences") or 0)
        return skipped + int(manifest["sequences_consumed"]), "sequences_consumed in the cache manifest"
    raise RunDirError(
        "the cache manifest does not record how many corpus sequences collection read, so held-out text "
        "cannot be chosen safely; pass corpus=OTHER_CORPUS to eval (text never used for training)"
    )


def heldout_tokens(model: Any, plan: HeldOutText, num_sequences: int) -> Int[Tensor, "n seq"]:
    """`num_sequences` chunks of held-out text (BOS-first), after skipping the training sequences."""
    from saekit.data import chunk_tokens, iter_texts
    from saekit.models import bos_token_id, tokenizer_of

    chunks = chunk_tokens(
        iter_texts(plan.corpus, plan.text_field),
        tokenizer_of(model),
        plan.context_length,
        bos_id=bos_token_id(model),
        max_sequences=num_sequences,
        skip_sequences=plan.skip_sequences,
    )
    try:
        seqs = list(chunks)
    except CorpusError as err:
        raise CorpusError(
            f"no held-out text in {plan.corpus} after skipping the {plan.skip_sequences} sequences used for "
            f"training ({err}); pass corpus=OTHER_CORPUS to eval, or collect fewer tokens"
        ) from None
    if not seqs:
        raise CorpusError(
            f"no held-out text in {plan.corpus} after skipping {plan.skip_sequences} sequences; pass "
            "corpus=OTHER_CORPUS to eval, or collect fewer tokens"
        )
    if len(seqs) < num_sequences:
        logger.warning(
            "only %d of %d held-out sequences available in %s", len(seqs), num_sequences, plan.corpus
        )
    return torch.stack(seqs)


@torch.no_grad()
def mean_activation(model: Any, tokens: Tensor, hookpoint: str, batch_size: int) -> Tensor:
    """Mean raw activation over non-special positions (used when there is no cache to take it from)."""
    from saekit.models import capture, special_token_mask

    total, count = None, 0
    for lo in range(0, tokens.shape[0], batch_size):
        batch = tokens[lo : lo + batch_size]
        acts = capture(model, batch, [hookpoint]).acts[hookpoint]
        keep = ~special_token_mask(batch, model).to(acts.device)
        rows = acts[keep].double().sum(0)
        total = rows if total is None else total + rows
        count += int(keep.sum())
    return (total / max(count, 1)).float()


# ---------------------------------------------------------------------------------------- entry point


def evaluate_run(
    run_dir: str | Path, cfg: EvalConfig = DEFAULT_EVAL, *, model: Any = None, memo: ForwardMemo | None = None
) -> dict[str, Any]:
    """Evaluate the SAE of a run directory; writes `<run>/eval.json` atomically and returns its content.

    `memo` (a `ForwardMemo`) reuses the SAE-independent forwards of earlier evaluations on the same text;
    its model is the one used, and an empty memo adopts the model this call loads."""
    require_device(cfg.device, "device")
    if memo is not None and memo.model is not None:
        if model is not None and model is not memo.model:
            raise ValueError("evaluate_run: model and memo.model differ; pass one of them")
        model = memo.model
    run = RunDir(run_dir)
    train_cfg = run.load_config()
    check_directory_target(run.eval_path.parent, "run")  # eval.json is written at the very end
    checkpoint = run.sae_dir()
    sae = run.load_sae(device=cfg.device).eval()
    logger.info("evaluating %s (%s, d_sae=%d) at %s", checkpoint, sae.cfg.method, sae.d_sae, sae.hookpoint)

    cache = _open_training_cache(train_cfg)
    if cache is not None and cache.d_in != sae.d_in:
        raise DataError(
            f"the cache at {cache.directory} has d_in={cache.d_in} but the SAE in {checkpoint} has "
            f"d_in={sae.d_in}; point the run's cache_dir at the cache it was trained on"
        )
    plan = plan_heldout(train_cfg, cache.manifest if cache is not None else None, cfg)
    if model is None:
        from saekit.models import load_model

        model = load_model(plan.model, device=cfg.device)
    if memo is not None and memo.model is None:
        memo.model = model
    _warn_if_other_model(model, sae)
    check_model_fits_sae(model, sae, plan.context_length)
    tokens = heldout_tokens(model, plan, cfg.num_sequences)
    calibration = calibrate_for_eval(sae, cfg, model, plan, cache, memo)  # before any metric: θ changes codes
    if calibration is not None and cfg.save_calibration:
        calibration["saved_to"] = str(save_calibrated(sae, checkpoint, run.path, calibration))
    cached = None
    if cache is not None:
        cached = cached_row_metrics(cache, sae, cfg.max_eval_rows, cfg.dense_threshold)
    mean_act, mean_source = _ablation_mean(cache, cached)
    if mean_act is None:
        mean_act = mean_activation(model, tokens, sae.hookpoint, cfg.batch_size)
    heldout = ReconstructionStats(sae.d_sae, cfg.dense_threshold)
    losses = spliced_losses(
        model, sae, tokens, batch_size=cfg.batch_size, mean_act=mean_act, recon=heldout, memo=memo
    )

    result = _assemble(run.path, checkpoint, sae, cfg, plan, cached, heldout, losses, mean_source)
    result["sparsity_target"] = {"target_l0": target_l0(sae), "calibration": calibration}
    rows = take_rows(
        rows_source(model, memo, tokens, sae.hookpoint, batch_size=cfg.batch_size), cfg.max_eval_rows
    )
    result["extras"] = extra_metrics(sae, cfg, rows=rows, model=model)
    modes = get_method(sae.cfg.method).selection_modes  # e.g. g-SAE: also gradient-informed selection
    if modes:
        result["selection_modes"] = {
            "top_level": "plain",
            **{
                mode: SELECTION_MODE_METRICS[mode](sae, cache, model, tokens, cfg, mean_act, memo=memo)
                for mode in modes
            },
        }
    if cache is not None and level_report(sae) is not None:  # nested methods: one FVU/L0 per level
        result["levels"] = level_metrics(sae, iter_last_rows(cache, cfg.max_eval_rows))
    atomic_write_json(run.eval_path, result)
    logger.info("wrote %s", run.eval_path)
    return result


def calibrate_for_eval(
    sae: Any, cfg: EvalConfig, model: Any, plan: HeldOutText, cache: Any, memo: ForwardMemo | None = None
) -> dict[str, Any] | None:
    """cfg.calibrate: re-estimate the SAE's inference thresholds (in memory; the checkpoint is unchanged)
    on held-out text after the evaluated sequences, or on the cache's last rows; the report, or None."""
    if cfg.calibrate == "none":
        return None
    if cfg.calibrate == "cache":
        if cache is None:
            raise DataError("calibrate=cache needs the run's activation cache; use calibrate=heldout")
        rows, source = iter_last_rows(cache, cfg.calibration_rows), "last rows of the training cache"
    else:
        count = math.ceil(cfg.calibration_rows / max(plan.context_length - 2, 1)) + 1
        later = dataclasses.replace(plan, skip_sequences=plan.skip_sequences + cfg.num_sequences)
        tokens = heldout_tokens(model, later, count)
        rows = rows_source(model, memo, tokens, sae.hookpoint, batch_size=cfg.batch_size)
        source = f"{plan.corpus}: {len(tokens)} sequences after the {cfg.num_sequences} evaluated"
    report = calibrate_thresholds_(sae, rows, max_rows=cfg.calibration_rows)
    return None if report is None else {**report, "source": source}


def check_model_fits_sae(model: Any, sae: Any, context_length: int) -> None:
    """The SAE's hook point exists in `model` with width d_in, and `context_length` fits the model's
    position table; checked on a 2-token probe before any long pass."""
    from saekit.activations.rows import check_context_length
    from saekit.models import hook_widths, validate_hookpoints

    validate_hookpoints(model, [sae.hookpoint])
    check_context_length(model, context_length)
    width = hook_widths(model, [sae.hookpoint])[sae.hookpoint]
    if width != sae.d_in:
        raise DataError(
            f"the model's {sae.hookpoint} has width {width} but the SAE has d_in={sae.d_in}; evaluate with "
            "the model the SAE was trained on (model=... or the run's cache manifest)"
        )


def _warn_if_other_model(model: Any, sae: Any) -> None:
    """Splicing into a model the SAE was not trained on gives meaningless numbers; say so loudly."""
    from saekit import models

    name = models.model_id(model) if hasattr(models, "model_id") else None
    if name and sae.model_id and name != sae.model_id:
        logger.warning(
            "the SAE was trained on %r activations but evaluation uses model %r", sae.model_id, name
        )


def _ablation_mean(cache: Any, cached: ReconstructionStats | None) -> tuple[Tensor | None, str]:
    """The dataset mean of the raw activation: the whole cache's (fp64 at write time) when recorded."""
    stats = (cache.manifest.get("norm_stats") or {}) if cache is not None else {}
    if stats.get("mean") is not None:
        return torch.tensor(stats["mean"], dtype=torch.float32), "training cache (all rows, manifest)"
    if cached is not None and cached.rows:
        return cached.mean().float(), "evaluated cache rows"
    return None, "held-out text"


def _open_training_cache(train_cfg: TrainConfig) -> Any:
    if train_cfg.cache_dir is None:
        return None
    from saekit.activations import open_cache

    return open_cache(train_cfg.cache_dir, train_cfg.hookpoint)


def _assemble(
    run_dir: Path,
    checkpoint: Path,
    sae: Any,
    cfg: EvalConfig,
    plan: HeldOutText,
    cached: ReconstructionStats | None,
    heldout: ReconstructionStats,
    losses: dict[str, Any],
    mean_source: str,
) -> dict[str, Any]:
    return {
        "format_version": EVAL_FORMAT_VERSION,
        "run_dir": str(run_dir),
        "checkpoint": str(checkpoint),
        "sae": {
            "method": sae.cfg.method,
            "params": to_dict(sae.cfg.params),
            "k": sae.cfg.param("k"),
            "d_in": sae.d_in,
            "d_sae": sae.d_sae,
            "hookpoint": sae.hookpoint,
            "model_id": sae.model_id,
            "act_scale": float(sae.act_scale),
        },
        "settings": {
            "eval_config": to_dict(cfg),
            "excluded_positions": EXCLUDED_POSITIONS,
            "special_positions_spliced": False,
            "ablations": list(ABLATIONS),
            "mean_ablation_source": mean_source,
            "dense_threshold": cfg.dense_threshold,
            "dead_definition": "no firing (value > 0) over the evaluated tokens",
            "reconstruction_space": "raw (unscaled) hook activations",
            "cached_rows_note": "last rows of the training cache; also seen in training, so they measure fit",
            "heldout": {
                "model": plan.model,
                "corpus": plan.corpus,
                "context_length": plan.context_length,
                "skipped_sequences": plan.skip_sequences,
                "skip_reason": plan.skip_reason,
            },
            "tokens": {
                "cached_rows": cached.rows if cached is not None else 0,
                "heldout_sequences": losses["sequences"],
                "heldout_scored_positions": losses["positions"],
                "heldout_reconstruction_rows": heldout.rows,
            },
        },
        "cached": cached.compute() if cached is not None else None,
        "heldout": heldout.compute(),
        "splice": losses,
    }


# ---------------------------------------------------------------------------------------- table
