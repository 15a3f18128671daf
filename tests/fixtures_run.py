"""A tiny but complete RUNS_DIR for the app and notebook tests, built through the public pipeline.

`build_fixture_runs(root)` collects a few thousand tokens of the tiny random model, trains two small
TopK+AuxK SAEs on that one cache (k=4 and k=8, each with a mid-run checkpoint), evaluates both, and
indexes the k=4 run only, so pages also meet a run without an index. A finished build is reused (marker
file), so test modules sharing a session-scoped base temp dir build it once.

    runs = build_fixture_runs(tmp_path_factory.getbasetemp() / "saekit_runs")
    runs / TOPK_RUN, runs / WIDE_K_RUN        # run directories; runs / "cache" is the shared cache
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

HOOK = "blocks.1.hook_resid_post"
TOPK_RUN = "tiny/topk"
WIDE_K_RUN = "tiny/topk_k8"
D_SAE = 128
_DONE = ".fixture-complete"

logger = logging.getLogger(__name__)


def collect_tiny_cache(out: Path, *, max_tokens: int, model=None, **keys) -> Path:
    """A cache of the tiny random model at blocks.1 (context 32, 8 sequences per forward) in `out`; `keys`
    are further CollectConfig fields (shard_tokens, capture_grads, ...). Shared by the test modules that
    train on a tiny cache."""
    from saekit.activations import collect
    from saekit.config import CollectConfig

    cfg = CollectConfig(
        model="tiny",
        hookpoints=(HOOK,),
        context_length=32,
        max_tokens=max_tokens,
        batch_size=8,
        out_dir=str(out),
        **keys,
    )
    collect(cfg, model=model, progress=False)
    return Path(out)


def build_fixture_runs(root: Path) -> Path:
    """Build (or reuse) the fixture RUNS_DIR under `root` and return it."""
    root = Path(root)
    if (root / _DONE).is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)  # a build interrupted half-way is started over
    from saekit.analysis import build_index
    from saekit.config import EvalConfig
    from saekit.eval import evaluate_run
    from saekit.models import load_model

    model = load_model("tiny")
    cache = root / "cache"
    collect_tiny_cache(cache, max_tokens=3000, shard_tokens=1000, model=model)
    _train_runs(root, cache)
    for name in (TOPK_RUN, WIDE_K_RUN):
        evaluate_run(root / name, EvalConfig(num_sequences=6, batch_size=3, max_eval_rows=1000), model=model)
    build_index(
        root / TOPK_RUN,
        model=model,
        num_sequences=24,
        batch_size=8,
        top_examples=8,
        quantile_bins=3,
        examples_per_bin=2,
        context_window=(6, 2),
        progress=False,
        compute_output_scores=True,
    )
    (root / _DONE).write_text("ok\n")
    return root


def _train_runs(root: Path, cache: Path) -> None:
    from saekit.config import SaeConfig, TrainConfig
    from saekit.train import train

    common = dict(
        cache_dir=str(cache),
        hookpoint=HOOK,
        total_tokens=3072,
        batch_size=256,
        log_every=2,
        checkpoint_every=6,
        norm_estimation_tokens=1000,
        shuffle_buffer_tokens=1000,
        progress=False,
    )
    # a one-batch dead window, so some latents die and the dead-latent page has content
    for name, k in ((TOPK_RUN, 4), (WIDE_K_RUN, 8)):
        sae = SaeConfig.make("topk", k=k, d_sae=D_SAE, dead_tokens=256)
        train(TrainConfig(sae=sae, run_dir=str(root / name), **common))


if __name__ == "__main__":  # build once for notebooks: SAEKIT_RUN=$(python tests/fixtures_run.py DIR)
    import sys

    sys.stdout.write(f"{build_fixture_runs(Path(sys.argv[1])) / TOPK_RUN}\n")
