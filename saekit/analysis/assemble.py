"""Turning a scan into the index's tensors (plus weight-only properties and scores), and writing them.

arrays = assemble_arrays(model, sae, scan, settings)     # {"stats": {...}, "examples": {...}}
write_index(run_dir / "index", arrays, meta, decoded_vocab_for(model, arrays))
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from saekit.analysis.accumulate import ExampleKeeper, LatentStats, token_windows
from saekit.analysis.decoder import decoder_neighbours, logit_effects
from saekit.analysis.format import (
    EXAMPLES_FILE,
    HISTOGRAM_BINS,
    META_FILE,
    QUANTILE_LEVELS,
    STATS_FILE,
    VOCAB_FILE,
    decoded_vocab,
)
from saekit.analysis.scan import IndexSettings, ScanResult
from saekit.analysis.scores import input_scores, output_scores
from saekit.io import atomic_write_json, staged_directory

logger = logging.getLogger(__name__)


@torch.no_grad()
def assemble_arrays(
    model: Any,
    sae: Any,
    scan: ScanResult,
    settings: IndexSettings,
    *,
    progress: bool = True,
    timings: dict[str, float] | None = None,
) -> dict[str, dict[str, Tensor]]:
    """The `stats` and `examples` tensors of the index, from a scan plus the SAE's weights; the seconds
    of each phase go into `timings` (`weights_seconds`, `output_scores_seconds`) when given."""
    from saekit.models import final_norm_and_unembed

    timings = {} if timings is None else timings
    start = time.perf_counter()
    stats = scan.stats
    top_valid = torch.isfinite(scan.top.score)
    centre = settings.context_window[0]
    top_tokens = token_windows(scan.tokens, scan.top.seq_ids(), scan.top.pos, *settings.context_window)
    top_max_tokens = top_tokens[:, :, centre]  # −1 for empty slots
    effects = logit_effects(
        sae.W_dec,
        final_norm_and_unembed(model),
        top_n=settings.logit_top_n,
        lens_k=settings.logit_lens_top_k,
        progress="index: logit effects" if progress else None,
    )
    effects = {k: v.cpu() for k, v in effects.items()}
    nb_ids, nb_cos = decoder_neighbours(sae.W_dec, top_n=settings.neighbours)
    timings["weights_seconds"] = time.perf_counter() - start
    logger.info("logit effects and decoder neighbours done (%.1f s)", timings["weights_seconds"])
    out = {
        "count": stats.count,
        "frequency": stats.frequency(),
        "mean_activation": stats.mean(),
        "max_activation": stats.max.clone(),
        "quantile_levels": torch.tensor(QUANTILE_LEVELS, dtype=torch.float32),
        "quantiles": stats.quantiles(QUANTILE_LEVELS),
        "histogram": stats.histogram(HISTOGRAM_BINS).to(torch.int32),
        "neighbour_ids": nb_ids.cpu(),
        "neighbour_cos": nb_cos.cpu(),
        "top_max_tokens": top_max_tokens,
        "n_top_examples": top_valid.sum(1).to(torch.int32),
        "input_score": input_scores(
            top_max_tokens, effects["lens_ids"], min_examples=settings.min_input_examples
        ),
        **effects,
    }
    start = time.perf_counter()
    out.update(_output_score_arrays(model, sae, effects["lens_ids"], settings, progress))
    timings["output_scores_seconds"] = time.perf_counter() - start
    logger.info("output scores done (%.1f s)", timings["output_scores_seconds"])
    examples = {
        **_top_arrays(scan.top, top_tokens),
        **_quantile_arrays(scan.sample, stats, settings, scan.tokens),
        "sequences": scan.tokens.to(torch.int32).contiguous(),
    }
    return {"stats": out, "examples": examples}


def _output_score_arrays(model, sae, lens_ids, settings: IndexSettings, progress: bool) -> dict[str, Tensor]:
    names = ("output_score", "output_rank_score", "output_prob_score")
    if not settings.output_scores:
        return {name: torch.full((sae.d_sae,), math.nan) for name in names}
    scores = output_scores(
        model,
        sae,
        prompts=settings.prompts,
        amp=settings.output_amp,
        logit_lens_top_k=settings.logit_lens_top_k,
        lens_ids=lens_ids,
        batch_size=settings.output_batch_size,
        progress="index: output scores" if progress else None,
    )
    return {
        "output_score": scores["output_score"],
        "output_rank_score": scores["rank_score"],
        "output_prob_score": scores["prob_score"],
    }


def _top_arrays(top: ExampleKeeper, tokens: Tensor) -> dict[str, Tensor]:
    valid = torch.isfinite(top.score)
    return {
        "top_tokens": tokens,
        "top_acts": top.acts.masked_fill(~valid[..., None], 0.0),
        "top_values": top.value.masked_fill(~valid, 0.0),
        "top_seq": top.seq.masked_fill(~valid, -1).to(torch.int32),
        "top_pos": top.pos.masked_fill(~valid, -1).to(torch.int32),
    }


def _quantile_arrays(
    sample: ExampleKeeper, stats: LatentStats, settings: IndexSettings, sequences: Tensor
) -> dict[str, Tensor]:
    """Pick `examples_per_bin` random samples per activation-quantile bin (slot = bin·per_bin + rank)."""
    nb, per = settings.quantile_bins, settings.examples_per_bin
    d_sae, n_samples, window = sample.acts.shape
    levels = tuple((j + 1) / nb for j in range(nb - 1))
    bounds = stats.quantiles(levels) if levels else torch.zeros(d_sae, 0)
    valid = torch.isfinite(sample.score)
    bins = torch.searchsorted(bounds.contiguous(), sample.value.contiguous(), right=True).clamp_(max=nb - 1)
    # rank of each sample among the earlier (higher-key, i.e. random-order) samples of its bin
    onehot = torch.nn.functional.one_hot(bins, nb) * valid[..., None]
    rank = (onehot.cumsum(1) - onehot).gather(2, bins[..., None]).squeeze(-1)
    chosen = valid & (rank < per)
    lat, j = chosen.nonzero(as_tuple=True)
    slot = bins[lat, j] * per + rank[lat, j]
    size = nb * per
    out = {
        "quant_tokens": torch.full((d_sae, size, window), -1, dtype=torch.int32),
        "quant_acts": torch.zeros(d_sae, size, window, dtype=torch.float16),
        "quant_values": torch.zeros(d_sae, size),
        "quant_seq": torch.full((d_sae, size), -1, dtype=torch.int32),
        "quant_pos": torch.full((d_sae, size), -1, dtype=torch.int32),
        "quant_bin": torch.full((d_sae, size), -1, dtype=torch.int32),
    }
    tokens = token_windows(sequences, sample.seq_ids(), sample.pos, *settings.context_window)
    out["quant_tokens"][lat, slot] = tokens[lat, j]
    out["quant_acts"][lat, slot] = sample.acts[lat, j]
    out["quant_values"][lat, slot] = sample.value[lat, j]
    out["quant_seq"][lat, slot] = sample.seq[lat, j].to(torch.int32)
    out["quant_pos"][lat, slot] = sample.pos[lat, j].to(torch.int32)
    out["quant_bin"][lat, slot] = bins[lat, j].to(torch.int32)
    out["quant_bounds"] = torch.cat([torch.zeros(d_sae, 1), bounds, stats.max[:, None]], 1)
    return out


def write_index(
    path: Path, arrays: dict[str, dict[str, Tensor]], meta: dict[str, Any], vocab: list[str]
) -> Path:
    """Write the index files into a staging directory and swap it into `path`."""
    with staged_directory(path) as tmp:
        save_file({k: v.contiguous() for k, v in arrays["stats"].items()}, str(tmp / STATS_FILE))
        save_file({k: v.contiguous() for k, v in arrays["examples"].items()}, str(tmp / EXAMPLES_FILE))
        (tmp / VOCAB_FILE).write_text(json.dumps(vocab, ensure_ascii=False))
        atomic_write_json(tmp / META_FILE, meta)
    return path


def decoded_vocab_for(model: Any, arrays: dict[str, dict[str, Tensor]]) -> list[str]:
    from saekit.models import tokenizer_of

    ids = [
        arrays["examples"]["sequences"],
        arrays["stats"]["promoted_ids"],
        arrays["stats"]["suppressed_ids"],
    ]
    largest = max(int(t.max()) for t in ids if t.numel())
    tok = tokenizer_of(model)
    return decoded_vocab(tok, max(len(tok), largest + 1))
