"""Activation cache (writer, reader), collection from a model, shuffled reader and live stream.

dirs = collect(CollectConfig(model="tiny", out_dir="runs/cache"))
reader = ShuffledReader(open_cache("runs/cache"), batch_size=4096, seed=0, buffer_tokens=262_144)
batch = next(iter(reader))                    # saekit.types.Batch
"""

from saekit.activations.cache import ActivationCache, list_hookpoints, open_cache
from saekit.activations.collect import collect, tokenizer_fingerprint
from saekit.activations.live import LiveStream
from saekit.activations.shuffle import ShuffledReader
from saekit.activations.writer import CacheWriter, NormStats

__all__ = [
    "ActivationCache",
    "CacheWriter",
    "LiveStream",
    "NormStats",
    "ShuffledReader",
    "collect",
    "list_hookpoints",
    "open_cache",
    "tokenizer_fingerprint",
]
