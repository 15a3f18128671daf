"""`saekit bench collection=true`: tokens/s of `collect` against the bare model forward at the same batch.

The bare forward is what collection cannot avoid: the embedded model run to the hook point (the forward stops
there, as `collect` does), with no copy, no row selection and no disk; with gradients, the full forward plus
the backward from the next-token loss down to the hook. `collect` is the real stage (writer, manifest,
hashes, fsync) into a temporary directory, on the same sequences, timed end to end. The full forward (all
layers and the unembedding) is printed for scale. Rounds are interleaved; medians reported.

    lines = collection_lines(cfg)       # a few lines for the bench output
"""

from __future__ import annotations

import itertools
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

from saekit.activations import collect
from saekit.activations.rows import iter_sequence_batches, keep_mask, model_seam
from saekit.config import BenchConfig, CollectConfig

MODEL, HOOK, CONTEXT = "embedded", "blocks.9.hook_resid_post", 128
BATCHES = 3
"""Batches of 16 × 128 tokens per timed run (6144 forward tokens)."""


def _collect_config(out_dir: str, with_grads: bool, max_tokens: int = 1) -> CollectConfig:
    return CollectConfig(
        model=MODEL,
        hookpoints=(HOOK,),
        max_tokens=max_tokens,
        batch_size=16,
        context_length=CONTEXT,
        capture_grads=with_grads,
        out_dir=out_dir,
    )


def _median_seconds(fns: dict[str, Callable[[], Any]], reps: int) -> dict[str, float]:
    for fn in fns.values():
        fn()  # warm-up: lazy imports, allocator, corpus fingerprint caches
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(times) for name, times in samples.items()}


def time_collection(reps: int) -> dict[str, float]:
    """Forward tokens/s of each variant (bare / collect, without and with gradients, and the full forward)."""
    from saekit.models.hooks import capture, forward_to  # TransformerLens: imported only when used

    model = model_seam().load_model(MODEL)
    probe_cfg = _collect_config("unused", with_grads=False)
    batches = [
        b.tokens for b in itertools.islice(iter_sequence_batches(probe_cfg, model, skip_sequences=0), BATCHES)
    ]
    n_tokens = sum(t.numel() for t in batches)
    # Stored rows of exactly these batches (special positions excluded, and the last position with
    # gradients), so collect stops where the bare passes stop.
    stored = {g: sum(int(keep_mask(t, model, drop_last=g)[0].sum()) for t in batches) for g in (False, True)}

    def bare(with_grads: bool) -> Callable[[], None]:
        def run() -> None:
            for tokens in batches:
                if with_grads:
                    capture(model, tokens, [HOOK], with_grads=True)
                else:
                    forward_to(model, tokens, [HOOK])

        return run

    def full() -> None:
        with torch.no_grad():
            for tokens in batches:
                model(tokens)

    def collecting(with_grads: bool) -> Callable[[], None]:
        def run() -> None:
            with tempfile.TemporaryDirectory(prefix="saekit-bench-collect-") as out:
                collect(_collect_config(out, with_grads, stored[with_grads]), model=model, progress=False)

        return run

    fns = {
        "bare": bare(False),
        "collect": collecting(False),
        "bare_grads": bare(True),
        "collect_grads": collecting(True),
        "full_forward": full,
    }
    medians = _median_seconds(fns, reps)
    return {name: n_tokens / seconds for name, seconds in medians.items()}


def collection_lines(cfg: BenchConfig) -> list[str]:
    torch.set_num_threads(cfg.threads)
    tps = time_collection(min(cfg.reps, 3))
    return [
        f"collection ({HOOK} of the {MODEL} model, {BATCHES} batches of 16 × {CONTEXT} tokens, forward "
        "tokens/s, medians):",
        f"  no gradients:   collect {tps['collect']:8.0f}  bare forward to the hook {tps['bare']:8.0f}  "
        f"ratio {tps['collect'] / tps['bare']:.2f}  (full forward {tps['full_forward']:.0f})",
        f"  with gradients: collect {tps['collect_grads']:8.0f}  bare forward+backward "
        f"{tps['bare_grads']:8.0f}  ratio {tps['collect_grads'] / tps['bare_grads']:.2f}",
        "target (issue 14): collect ≥ 0.9× the bare forward without gradients",
    ]
