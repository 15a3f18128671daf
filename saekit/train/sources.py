"""Where training rows come from: the on-disk cache (shuffled reader) or live collection (no disk).

Both give the trainer the same thing: an iterator of `Batch`, a sample of raw rows for normalisation and
initialisation, and a resumable position.

    source = open_training_source(cfg)
    sample = source.sample            # Float[n, d_in], raw (unscaled) activations
    batch = next(source.batches)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from saekit.config import TrainConfig
from saekit.errors import ConfigError, DataError
from saekit.ranks import current_ranks

logger = logging.getLogger(__name__)


@dataclass
class TrainingSource:
    batches: Any
    """An iterable of Batch with state_dict()/load_state_dict() for exact resume."""
    sample: Tensor
    d_in: int
    hookpoint: str
    model_id: str
    description: dict[str, Any]

    def __post_init__(self) -> None:
        self._iter = iter(self.batches)

    def next_batch(self):
        return next(self._iter)

    def state_dict(self) -> dict[str, Any]:
        return self.batches.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batches.load_state_dict(state)
        self._iter = iter(self.batches)


def open_training_source(cfg: TrainConfig) -> TrainingSource:
    world = current_ranks().world_size
    if cfg.batch_size < world:
        raise ConfigError(
            f"batch_size={cfg.batch_size} is the global batch, split over {world} ranks: give at least "
            f"batch_size={world}, or start fewer ranks"
        )
    if cfg.cache_dir is not None:
        return _cache_source(cfg)
    return _live_source(cfg)


def _cache_source(cfg: TrainConfig) -> TrainingSource:
    from saekit.activations import ShuffledReader, open_cache

    cache = open_cache(cfg.cache_dir, cfg.hookpoint)  # every shard load re-hashes against the manifest
    manifest = cache.manifest
    sample = cache.rows(min(cfg.norm_estimation_tokens, cache.num_tokens)).float()
    check_finite(sample, f"cache {cfg.cache_dir}")
    ranks = current_ranks()  # each rank reads its part of every global batch of cfg.batch_size rows
    reader = ShuffledReader(
        cache,
        cfg.batch_size,
        seed=cfg.seed,
        buffer_tokens=cfg.shuffle_buffer_tokens,
        rank=ranks.rank,
        world_size=ranks.world_size,
    )
    description = {
        "kind": "cache",
        "cache_dir": str(cfg.cache_dir),
        "cache_tokens": cache.num_tokens,
        "cache_fingerprint": _cache_fingerprint(manifest),
    }
    if cfg.total_tokens > cache.num_tokens:
        logger.info(
            "training on %d tokens from a cache of %d: %.1f epochs",
            cfg.total_tokens,
            cache.num_tokens,
            cfg.total_tokens / cache.num_tokens,
        )
    return TrainingSource(
        reader, sample, cache.d_in, manifest["hookpoint"], manifest.get("model_id", ""), description
    )


def _live_source(cfg: TrainConfig) -> TrainingSource:
    from saekit.activations import LiveStream
    from saekit.models import load_model

    hookpoint = cfg.hookpoint or cfg.live.hookpoints[0]
    model = load_model(cfg.live.model, device=cfg.live.device)
    ranks = current_ranks()  # each rank reads its own sequences; its batch is its part of cfg.batch_size
    lo, hi = ranks.share(cfg.batch_size)
    shard = {"rank": ranks.rank, "world_size": ranks.world_size}
    stream = LiveStream(cfg.live, hookpoint, hi - lo, model=model, **shard)
    # The estimation sample comes from a second stream over the same text: the rows are seen again in
    # training, exactly as cached runs estimate on rows they also train on. (Under data parallelism rank 0's
    # sample initialises the SAE and is broadcast to the other ranks.)
    sampler = iter(LiveStream(cfg.live, hookpoint, hi - lo, model=model, **shard))
    rows, got = [], 0
    while got < cfg.norm_estimation_tokens:
        batch = next(sampler)
        rows.append(batch.acts)
        got += len(batch)
    sample = torch.cat(rows)[: cfg.norm_estimation_tokens].float()
    check_finite(sample, "live activations")
    description = {"kind": "live", "model": cfg.live.model, "corpus": cfg.live.corpus}
    return TrainingSource(stream, sample, stream.d_in, hookpoint, cfg.live.model, description)


def check_finite(x: Tensor, where: str) -> None:
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).any(dim=-1).nonzero().flatten()[:5].tolist()
        raise DataError(
            f"{where} contains NaN or inf activations (rows {bad}...); re-collect the cache, "
            "e.g. without bf16 autocast, or check the model"
        )


def _cache_fingerprint(manifest: dict[str, Any]) -> str:
    import hashlib

    shas = "".join(s.get("sha256", "") for s in manifest.get("shards", []))
    return hashlib.sha256(shas.encode()).hexdigest()[:16]
