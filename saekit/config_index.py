"""The `saekit index` stage config (kept out of config.py, which is near its size limit). Every keyword of
`saekit.analysis.build_index` is a key here, so `saekit index --help` documents all of them.

cfg = load_config(IndexConfig, None, ["num_sequences=64", "compute_output_scores=false"])
"""

from __future__ import annotations

from dataclasses import dataclass

from saekit.config_checks import require_positive
from saekit.config_io import require


@dataclass(frozen=True)
class IndexConfig:
    """What `saekit index RUN` does: scan held-out text and store per-latent statistics and examples."""

    num_sequences: int = 256
    """Held-out sequences scanned (the scan's cost grows with it; the other phases do not)."""
    context_length: int | None = None
    """Tokens per sequence; null: the training cache's context length."""
    batch_size: int = 8
    """Sequences per forward pass of the scan."""
    top_examples: int = 20
    """Top-activating examples kept per latent."""
    quantile_bins: int = 5
    """Equal-mass activation bins for the quantile examples."""
    examples_per_bin: int = 5
    """Quantile examples per bin."""
    context_window: tuple[int, int] = (16, 4)
    """Tokens [before, after] the centre token stored with every example."""
    compute_output_scores: bool = True
    """Output scores (Arad et al.): each latent boosted at the last position of each prompt; one pass per
    output_batch_size latents with the prompt prefix shared. false skips them (stored as NaN)."""
    output_batch_size: int = 256
    """Latents per output-score pass (a pass costs about one token per latent)."""
    prompts: tuple[str, ...] = ("From my experience,",)
    """Neutral prompts of the output score (its terms are averaged over them)."""
    output_amp: float = 10.0
    """Output-score boost, in units of the position's largest latent activation."""
    logit_lens_top_k: int = 20
    """Logit-lens tokens (T_i) used by the input and output scores."""
    min_input_examples: int = 10
    """A latent with fewer top examples than this gets a NaN input score."""
    seed: int = 0
    """Seed of the random quantile-example sample."""
    progress: bool = True
    """Progress bars with ETA for each phase (scan, logit effects, output scores)."""

    def __post_init__(self) -> None:
        require_positive(
            self,
            "num_sequences",
            "batch_size",
            "top_examples",
            "quantile_bins",
            "logit_lens_top_k",
            "output_batch_size",
        )
        require(self.examples_per_bin >= 0, "examples_per_bin", "must be >= 0")
        require(self.min_input_examples >= 0, "min_input_examples", "must be >= 0")
        require(min(self.context_window) >= 0, "context_window", "needs two counts >= 0: [before, after]")
        require(len(self.prompts) > 0 and all(self.prompts), "prompts", "needs at least one non-empty prompt")
        require(self.output_amp > 0, "output_amp", "must be > 0")
        require(
            self.context_length is None or self.context_length >= 2,
            "context_length",
            "needs room for BOS plus one token (or null for the cache's)",
        )
