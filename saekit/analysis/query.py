"""Read-only access to a built latent index: the one API the app and notebooks use.

Per-latent dense arrays (`stats.safetensors`, a few hundred bytes per latent) are loaded on open; the
example windows (`examples.safetensors`, the bulk) stay memory-mapped and `latent(i)` reads only latent
i's slices, so a card renders in milliseconds whatever d_sae is.

    index = LatentIndex.open("runs/demo/topk")
    card = index.latent(42)                      # LatentCard: stats, histogram, examples, logits, scores
    index.top_by("output_score", n=20)           # latent ids, NaN scores excluded
    index.find_by_token(" Paris")
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor

from saekit.analysis.format import (
    EXAMPLES_FILE,
    INDEX_DIR,
    INDEX_FORMAT_VERSION,
    META_FILE,
    STATS_FILE,
    VOCAB_FILE,
)
from saekit.errors import RunDirError

Metric = Literal["frequency", "max_activation", "mean_activation", "output_score", "input_score"]
METRICS: tuple[str, ...] = ("frequency", "max_activation", "mean_activation", "output_score", "input_score")


@dataclass
class Example:
    """A window of text around one position where a latent fired."""

    seq_id: int
    position: int
    """Position of the centre token inside its sequence."""
    activation: float
    """The latent's activation at the centre token."""
    token_ids: list[int]
    tokens: list[str]
    acts: list[float]
    """The latent's activation at every window token (aligned with `tokens`)."""
    centre: int
    """Index of the centre token inside the window."""
    bin: int | None = None
    """Activation-quantile bin (0 = lowest) for quantile examples; None for top examples."""

    @property
    def key(self) -> tuple[int, int]:
        """(sequence, position): the same firing has the same key in the top and quantile lists."""
        return self.seq_id, self.position


@dataclass
class LatentCard:
    """Everything the index knows about one latent."""

    latent: int
    count: int
    frequency: float
    mean_activation: float
    max_activation: float
    quantiles: dict[float, float]
    histogram_edges: list[float]
    histogram_counts: list[int]
    top_examples: list[Example]
    quantile_examples: list[Example]
    quantile_bounds: list[float]
    """Activation bounds of the quantile bins: bin b covers [bounds[b], bounds[b+1]]."""
    quantile_repeats: int
    """Quantile samples left out of `quantile_examples` because they are already top examples (rarely
    firing latents: their few firings are sampled into the bins and also kept as top examples)."""
    promoted: list[tuple[str, float]]
    """(token, logit) most raised by the decoder direction through the final norm + unembedding."""
    suppressed: list[tuple[str, float]]
    neighbours: list[tuple[int, float]]
    """(latent, decoder cosine), most similar first."""
    input_score: float
    output_score: float
    output_rank_score: float
    output_prob_score: float
    extra: dict[str, Any] = field(default_factory=dict)


class LatentIndex:
    """A built index directory (`<run>/index/`). Use `LatentIndex.open(run_dir)`."""

    def __init__(self, directory: Path, meta: dict[str, Any], stats: dict[str, Tensor], vocab: list[str]):
        self.directory = directory
        self.meta = meta
        self.stats = stats
        self.vocab = vocab
        self._examples = safe_open(str(directory / EXAMPLES_FILE), framework="pt")
        self._token_ids: dict[str, int] | None = None

    @classmethod
    def open(cls, run_dir: str | Path) -> LatentIndex:
        """Open `<run_dir>/index` (or an index directory itself)."""
        run_dir = Path(run_dir)
        directory = run_dir if (run_dir / META_FILE).is_file() else run_dir / INDEX_DIR
        missing = [
            f for f in (META_FILE, STATS_FILE, EXAMPLES_FILE, VOCAB_FILE) if not (directory / f).is_file()
        ]
        if missing:
            raise RunDirError(
                f"{directory} is not a complete latent index (missing {missing}); build it with "
                f"`saekit index {run_dir}`"
            )
        meta = json.loads((directory / META_FILE).read_text())
        if meta.get("format_version", 0) > INDEX_FORMAT_VERSION:
            raise RunDirError(
                f"{directory} has index format {meta['format_version']}, newer than this saekit "
                f"reads ({INDEX_FORMAT_VERSION}); upgrade saekit or rebuild the index"
            )
        vocab = json.loads((directory / VOCAB_FILE).read_text())
        return cls(directory, meta, load_file(str(directory / STATS_FILE)), vocab)

    @property
    def d_sae(self) -> int:
        return int(self.meta["d_sae"])

    # ------------------------------------------------------------------------------ whole-index views

    def summary(self) -> dict[str, Any]:
        """Headline numbers: size, token count, dead/dense fractions, score medians, settings."""
        freq = self.stats["frequency"]
        finite = lambda t: t[torch.isfinite(t)]
        median = lambda t: float(finite(t).median()) if finite(t).numel() else math.nan
        return {
            "d_sae": self.d_sae,
            "model_id": self.meta["model_id"],
            "hookpoint": self.meta["hookpoint"],
            "tokens": self.meta["tokens"],
            "mean_l0": self.meta.get("mean_l0"),
            "dead_fraction": float((freq == 0).float().mean()),
            "dense_fraction": float((freq > 0.1).float().mean()),
            "median_frequency": median(freq[freq > 0]) if bool((freq > 0).any()) else 0.0,
            "median_input_score": median(self.stats["input_score"]),
            "median_output_score": median(self.stats["output_score"]),
            "settings": self.meta["settings"],
            "text": self.meta["text"],
        }

    def densities(self) -> Float[Tensor, " d_sae"]:
        """Firing frequency of every latent over the indexed tokens."""
        return self.stats["frequency"].clone()

    def top_by(self, metric: Metric, n: int = 20, descending: bool = True) -> list[int]:
        """The `n` latents with the largest (or smallest) `metric`; latents with a NaN value are skipped."""
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose from {list(METRICS)}")
        values = self.stats[metric].double()
        ids = torch.isfinite(values).nonzero().flatten()
        order = torch.argsort(values[ids], descending=descending, stable=True)
        return ids[order][:n].tolist()

    def find_by_token(
        self, token: str, *, side: Literal["both", "input", "output"] = "both", min_fraction: float = 0.5
    ) -> list[int]:
        """Latents tied to the token whose decoded string is exactly `token` (e.g. " Paris"); see
        `find_by_token_ids`. `matching_tokens` finds every spelling of a word first."""
        token_id = self.token_id(token)
        return (
            []
            if token_id is None
            else self.find_by_token_ids([token_id], side=side, min_fraction=min_fraction)
        )

    def find_by_token_ids(
        self,
        token_ids: list[int],
        *,
        side: Literal["both", "input", "output"] = "both",
        min_fraction: float = 0.5,
    ) -> list[int]:
        """Latents tied to any of `token_ids` (e.g. ' the', 'The', ' The').

        Input side: one of the tokens is the max-activating token of at least `min_fraction` of the
        latent's top examples (and of at least one). Output side: one of them is in the latent's logit-lens
        top-k (the tokens its decoder direction promotes most, T_i). Input matches come first (by that
        fraction, then max activation), then output-only matches (by the best rank in T_i).
        """
        if not token_ids:
            return []
        wanted = torch.tensor(sorted(set(token_ids)), dtype=torch.long)
        found: list[int] = []
        if side in ("both", "input"):
            tops = self.stats["top_max_tokens"].long()
            n = self.stats["n_top_examples"].clamp(min=1).double()
            hits = torch.isin(tops, wanted).sum(1)
            frac = hits.double() / n
            hit = (frac >= min_fraction) & (hits > 0)
            ids = hit.nonzero().flatten()
            key = frac[ids] * 1e6 + self.stats["max_activation"][ids].double().clamp(max=1e5)
            found += ids[torch.argsort(key, descending=True, stable=True)].tolist()
        if side in ("both", "output"):
            match = torch.isin(self.stats["lens_ids"].long(), wanted)
            ids = match.any(1).nonzero().flatten()
            rank = match[ids].float().argmax(1)
            seen = set(found)
            found += [i for i in ids[torch.argsort(rank, stable=True)].tolist() if i not in seen]
        return found

    def matching_tokens(self, query: str) -> list[tuple[int, str]]:
        """(id, exact string) of every vocabulary entry equal to `query` up to spaces and case."""
        from saekit.analysis.search import matching_tokens

        return matching_tokens(self.vocab, query)

    def preview(self, i: int, n_tokens: int = 3, before: int = 8, after: int = 3) -> dict[str, Any]:
        """A one-line view of latent `i` for tables: its top promoted tokens and its top example's text,
        `before`/`after` tokens around the firing token in [brackets] (reads one example slice only)."""
        promoted = self.decode(self.stats["promoted_ids"][i, :n_tokens].tolist())
        tokens = self._examples.get_slice("top_tokens")[i][0].tolist()
        centre = int(self.meta["settings"]["context_window"][0])
        kept = [(w, t) for w, t in enumerate(tokens) if t >= 0 and centre - before <= w <= centre + after]
        words = self.decode([t for _, t in kept])
        text = "".join(f"[{s}]" if w == centre else s for (w, _), s in zip(kept, words, strict=True))
        fired = bool(self.stats["n_top_examples"][i] > 0)
        return {"promotes": promoted, "example": text if fired else ""}

    def token_id(self, token: str) -> int | None:
        """Id of the vocabulary entry whose decoded string is `token` (the lowest id if several)."""
        if self._token_ids is None:
            self._token_ids = {}
            for i, s in enumerate(self.vocab):
                self._token_ids.setdefault(s, i)
        return self._token_ids.get(token)

    def decode(self, token_ids: list[int]) -> list[str]:
        """Display strings of token ids (−1 padding becomes '')."""
        return [self.vocab[i] if 0 <= i < len(self.vocab) else "" for i in token_ids]

    def sequence(self, seq_id: int) -> list[int]:
        """Token ids of one indexed held-out sequence (for showing an example in full context)."""
        return self._examples.get_slice("sequences")[seq_id].tolist()

    # ------------------------------------------------------------------------------ one latent

    def latent(self, i: int) -> LatentCard:
        """The card of latent `i`, reading only its own slices of the example file."""
        if not 0 <= i < self.d_sae:
            raise IndexError(f"latent {i} out of range: this index has d_sae={self.d_sae}")
        s = {name: t[i] for name, t in self.stats.items() if name != "quantile_levels"}
        levels = self.stats["quantile_levels"].tolist()
        max_act = float(s["max_activation"])
        bins = s["histogram"].numel()
        top, quantiles = self._examples_of(i, "top"), self._examples_of(i, "quant")
        shown = {ex.key for ex in top}  # a quantile sample equal to a top example would repeat it
        return LatentCard(
            latent=i,
            count=int(s["count"]),
            frequency=float(s["frequency"]),
            mean_activation=float(s["mean_activation"]),
            max_activation=max_act,
            quantiles=dict(zip(levels, s["quantiles"].tolist(), strict=True)),
            histogram_edges=[max_act * b / bins for b in range(bins + 1)],
            histogram_counts=s["histogram"].tolist(),
            top_examples=top,
            quantile_examples=[ex for ex in quantiles if ex.key not in shown],
            quantile_bounds=self._examples.get_slice("quant_bounds")[i].tolist(),
            quantile_repeats=sum(ex.key in shown for ex in quantiles),
            promoted=self._token_table(s["promoted_ids"], s["promoted_logits"]),
            suppressed=self._token_table(s["suppressed_ids"], s["suppressed_logits"]),
            neighbours=list(zip(s["neighbour_ids"].tolist(), s["neighbour_cos"].tolist(), strict=True)),
            input_score=float(s["input_score"]),
            output_score=float(s["output_score"]),
            output_rank_score=float(s["output_rank_score"]),
            output_prob_score=float(s["output_prob_score"]),
            extra={"lens_tokens": self.decode(s["lens_ids"].tolist())},
        )

    def _token_table(self, ids: Tensor, logits: Tensor) -> list[tuple[str, float]]:
        return list(zip(self.decode(ids.tolist()), logits.tolist(), strict=True))

    def _examples_of(self, i: int, kind: Literal["top", "quant"]) -> list[Example]:
        read = lambda name: self._examples.get_slice(f"{kind}_{name}")[i]
        seqs, positions, values = read("seq").tolist(), read("pos").tolist(), read("values").tolist()
        token_ids, acts = read("tokens").tolist(), read("acts").float().tolist()
        bins = read("bin").tolist() if kind == "quant" else [None] * len(seqs)
        centre = int(self.meta["settings"]["context_window"][0])
        out = []
        for j, seq_id in enumerate(seqs):
            if seq_id < 0:
                continue
            keep = [w for w, t in enumerate(token_ids[j]) if t >= 0]  # drop padding beyond the sequence
            ids = [token_ids[j][w] for w in keep]
            out.append(
                Example(
                    seq_id=seq_id,
                    position=positions[j],
                    activation=values[j],
                    token_ids=ids,
                    tokens=self.decode(ids),
                    acts=[acts[j][w] for w in keep],
                    centre=keep.index(centre),
                    bin=bins[j],
                )
            )
        return out
