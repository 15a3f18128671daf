"""The streaming pass of the index builder: held-out tokens -> per-latent statistics and examples.

Batches of sequences go through the model (stopped at the hook) and the SAE (inference mode). Special
positions are dropped. The sparse code is densified a few sequences at a time — at most DENSE_ELEMENTS
entries, whatever d_sae — to pick each (sequence, latent)'s candidates: its maximum (top examples) and a
uniformly random firing position (the sample the quantile examples are drawn from).

    settings = IndexSettings(num_sequences=64, ...)
    scan = scan_activations(model, sae, tokens, settings)     # ScanResult(stats, top, sample, ...)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from saekit.analysis.accumulate import Candidates, ExampleKeeper, LatentStats
from saekit.errors import ConfigError

DENSE_ELEMENTS = 1 << 24
"""Largest dense [sequences, seq, d_sae] code block built at once (64 MB fp32); bounds memory at any d_sae."""
SCAN_PHASE = "scan"
"""Progress-bar name of the streaming pass (the other phases: `assemble.py`)."""
SAMPLE_OVERSAMPLING = 3
"""Random examples kept per latent = this × quantile_bins × examples_per_bin, so most bins fill."""


@dataclass(frozen=True)
class IndexSettings:
    """Everything that shapes an index; stored in index.json. See `build_index` for the defaults."""

    num_sequences: int
    """Held-out sequences scanned (> 0)."""
    context_length: int | None
    """Tokens per sequence; None = the training cache's context length."""
    batch_size: int
    """Sequences per forward pass (> 0)."""
    top_examples: int
    """Top-activating examples kept per latent (> 0)."""
    quantile_bins: int
    """Equal-mass activation bins for the quantile examples (> 0)."""
    examples_per_bin: int
    """Quantile examples per bin (>= 0)."""
    context_window: tuple[int, int]
    """Tokens (before, after) the centre token in every example window (both >= 0)."""
    logit_lens_top_k: int
    """|T_i|: logit-lens tokens used by the input and output scores (> 0)."""
    prompts: tuple[str, ...]
    """Neutral prompts of the output score (averaged)."""
    output_amp: float
    """Boost of the output score, in units of the position's largest activation."""
    min_input_examples: int
    """Fewer top examples than this gives a NaN input score."""
    output_scores: bool
    """Compute output scores (one packed pass per `output_batch_size` latents per prompt)."""
    seed: int
    """Seed of the random example sample."""
    output_batch_size: int = 256
    """Latents per output-score pass."""
    logit_top_n: int = 10
    """Promoted and suppressed tokens stored per latent."""
    neighbours: int = 10
    """Nearest latents by decoder cosine stored per latent."""

    def __post_init__(self) -> None:
        checks = {
            "num_sequences": self.num_sequences > 0,
            "batch_size": self.batch_size > 0,
            "top_examples": self.top_examples > 0,
            "quantile_bins": self.quantile_bins > 0,
            "examples_per_bin": self.examples_per_bin >= 0,
            "context_window": min(self.context_window) >= 0 and len(self.context_window) == 2,
            "logit_lens_top_k": self.logit_lens_top_k > 0,
            "output_batch_size": self.output_batch_size > 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"build_index: invalid {name}={getattr(self, name)!r}; see its docstring")

    @property
    def window(self) -> int:
        return self.context_window[0] + 1 + self.context_window[1]

    @property
    def samples(self) -> int:
        return max(1, SAMPLE_OVERSAMPLING * self.quantile_bins * self.examples_per_bin)


@dataclass
class ScanResult:
    stats: LatentStats
    top: ExampleKeeper
    sample: ExampleKeeper
    tokens: Int[Tensor, "n seq"]
    positions: int


@torch.no_grad()
def scan_activations(
    model: Any, sae: Any, tokens: Int[Tensor, "n seq"], settings: IndexSettings, *, progress: bool = True
) -> ScanResult:
    """One pass over `tokens`: statistics, top examples and a random example sample for every latent."""
    from saekit.models import capture, special_token_mask

    n, seq = tokens.shape
    result = ScanResult(
        LatentStats(sae.d_sae),
        ExampleKeeper(sae.d_sae, settings.top_examples, settings.window),
        ExampleKeeper(sae.d_sae, settings.samples, settings.window),
        tokens,
        0,
    )
    generator = torch.Generator().manual_seed(settings.seed)
    bar = tqdm(total=n * seq, desc=f"index: {SCAN_PHASE}", unit="tok", unit_scale=True, disable=not progress)
    for lo in range(0, n, settings.batch_size):
        batch = tokens[lo : lo + settings.batch_size]
        acts = capture(model, batch, [sae.hookpoint]).acts[sae.hookpoint]
        special = special_token_mask(batch, model).cpu()
        code = sae.encode(acts.reshape(-1, acts.shape[-1]), training=False)
        rows, latents = code.row_ids().cpu(), code.indices.cpu()
        values = code.values.detach().float().cpu()
        keep = ~special.reshape(-1)[rows] & (values > 0)
        rows, latents, values = rows[keep], latents[keep], values[keep]
        result.stats.update(latents, values, n_tokens=int((~special).sum()))
        _offer_examples(result, batch, rows, latents, values, lo, settings, generator)
        result.positions += batch.numel()
        bar.update(batch.numel())
    bar.close()
    return result


def _offer_examples(
    result: ScanResult,
    batch: Tensor,
    rows: Tensor,
    latents: Tensor,
    values: Tensor,
    seq_offset: int,
    settings: IndexSettings,
    generator: torch.Generator,
) -> None:
    """Densify the code a few sequences at a time and offer their candidates to both example keepers."""
    b, seq = batch.shape
    d_sae = result.stats.d_sae
    # Random sampling keys only for firing entries: far cheaper than a dense [b, seq, d_sae] draw.
    keys = torch.rand(values.numel(), generator=generator)
    step = max(1, DENSE_ELEMENTS // (seq * d_sae))
    before, after = settings.context_window
    for s0 in range(0, b, step):
        s1 = min(b, s0 + step)
        part = (rows >= s0 * seq) & (rows < s1 * seq)
        local = rows[part] - s0 * seq
        z = torch.zeros((s1 - s0) * seq, d_sae)
        z[local, latents[part]] = values[part]
        key = torch.full_like(z, -1.0)
        key[local, latents[part]] = keys[part]
        z, key = z.view(s1 - s0, seq, d_sae), key.view(s1 - s0, seq, d_sae)
        seq_ids = torch.arange(seq_offset + s0, seq_offset + s1)
        best, pos = z.max(dim=1)
        result.top.offer(_candidates(z, best, pos, best, seq_ids, before, after))
        best_key, key_pos = key.max(dim=1)
        picked = z.gather(1, key_pos[:, None, :]).squeeze(1)
        result.sample.offer(_candidates(z, best_key, key_pos, picked, seq_ids, before, after))


def _candidates(z, score, pos, value, seq_ids, before, after) -> Candidates:
    score = torch.where(value > 0, score, torch.full_like(score, -math.inf))
    return Candidates(score, value, seq_ids, pos, z, before, after)
