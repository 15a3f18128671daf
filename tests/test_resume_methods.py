"""Resume is bit-exact for methods whose objective or optimiser carries state of its own: JumpReLU (a trained
threshold in its own Adam group, a λ warm-up counter), sampled Matryoshka (importance EMA, latent re-sorts)
and aux_zipf (frequency EMA). The state lives on the run's objective and travels in trainer_state.json."""

import json
import shutil

import pytest
import torch
from fixtures_run import collect_tiny_cache
from safetensors.torch import load_file

from saekit.config import SaeConfig, TrainConfig
from saekit.rundir import RunDir
from saekit.train import train

METHOD_KEYS = {
    "jumprelu": {"target_l0": 4, "sparsity_warmup_steps": 5},
    "matryoshka": {"k": 4, "prefix_mode": "sampled", "n_sampled_prefixes": 3},
    "aux_zipf": {"k": 4, "k_aux": 8},
}


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    return collect_tiny_cache(tmp_path_factory.mktemp("cache"), max_tokens=2000, shard_tokens=700)


def run_cfg(cache, run_dir, method, total_steps):
    sae = SaeConfig.make(method, expansion_factor=2, dead_tokens=300, **METHOD_KEYS[method])
    return TrainConfig(
        sae=sae,
        cache_dir=str(cache),
        run_dir=str(run_dir),
        total_tokens=128 * total_steps,
        batch_size=128,
        log_every=2,
        checkpoint_every=3,
        norm_estimation_tokens=512,
        shuffle_buffer_tokens=1024,
        progress=False,
    )


@pytest.mark.parametrize("method", sorted(METHOD_KEYS))
def test_resume_is_bit_exact_with_objective_state(tiny_cache, tmp_path, method, monkeypatch):
    if method == "matryoshka":  # re-sort often enough that a resume crosses a re-sort
        import dataclasses
        from functools import partial

        from saekit.sae import METHODS
        from saekit.sae.methods.matryoshka import MatryoshkaObjective

        often = partial(MatryoshkaObjective, resort_every_tokens=256)
        monkeypatch.setitem(
            METHODS, "matryoshka", dataclasses.replace(METHODS["matryoshka"], objective=often)
        )
    full = train(run_cfg(tiny_cache, tmp_path / "full", method, 10))
    train(run_cfg(tiny_cache, tmp_path / "half", method, 5))  # checkpoint at step 3, final at 5
    shutil.rmtree(RunDir(tmp_path / "half").final_dir)
    resumed = train(run_cfg(tiny_cache, tmp_path / "half", method, 10), resume=True)
    a = load_file(str(RunDir(full).final_dir / "sae.safetensors"))
    b = load_file(str(RunDir(resumed).final_dir / "sae.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=f"{method}: {name}")
    state = json.loads((RunDir(tmp_path / "half").step_dir(3) / "trainer_state.json").read_text())
    assert state.get("objective"), f"{method}: the objective's state was not checkpointed"
