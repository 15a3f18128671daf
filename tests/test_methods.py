"""Every method is one declaration (saekit.sae.method): each trains through the one step function, saves,
loads and runs batch-independently; a new method needs nothing but its own module; the trainer and the
benchmark call the same step."""

import dataclasses

import pytest
import torch

from saekit.config_help import field_docs
from saekit.errors import ConfigError
from saekit.sae import METHODS, Method, Sae, SaeConfig, get_method, make_objective, register_method
from saekit.sae.config import TopKParams
from saekit.sae.methods.topk import TopK
from saekit.sae.objective import ReconstructionAuxK
from saekit.train.step import make_optimizer, training_step
from saekit.types import Batch

BUILT_IN = {
    "topk", "batchtopk", "mutual_choice", "feature_choice", "aux_zipf", "matryoshka",
    "multi_topk", "hierarchical_topk", "msae", "gsae", "mp", "jumprelu",
}  # fmt: skip


def small_cfg(name: str) -> SaeConfig:
    method = get_method(name)
    keys = {"d_sae": 48, "normalize_activations": "none"}
    if method.l0_param is not None:
        keys[method.l0_param] = 4
    if "prefixes" in {f.name for f in dataclasses.fields(method.params)}:
        keys["prefixes"] = (12, 24, 48)
    if "k_levels" in {f.name for f in dataclasses.fields(method.params)}:
        keys["k_levels"] = (4, 16) if name == "multi_topk" else (4,)
    return SaeConfig.make(name, **keys)


def test_the_registry_holds_every_built_in_method():
    assert set(METHODS) >= BUILT_IN
    for name in BUILT_IN:
        method = get_method(name)
        assert method.name == name and method.summary
        assert method.l0_param is None or method.l0_param in {
            f.name for f in dataclasses.fields(method.params)
        }


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_every_method_key_is_documented(name):
    params = get_method(name).params
    docs = field_docs(params)
    missing = [f.name for f in dataclasses.fields(params) if not docs.get(f.name)]
    assert missing == [], f"{name}: keys without a docstring: {missing}"


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_every_method_trains_saves_and_infers_per_token(name, tmp_path):
    torch.manual_seed(0)
    cfg = small_cfg(name)
    sae = Sae(16, cfg)
    objective = make_objective(cfg)
    optimizer = make_optimizer(sae, lr=1e-3)
    needs_grads = get_method(name).needs_grads
    for _ in range(3):
        x = torch.randn(64, 16)
        batch = Batch(x, grads=torch.randn(64, 16) if needs_grads else None)
        out = training_step(sae, objective, optimizer, batch, mse_scale=1.0)
        assert torch.isfinite(out.loss) and "fvu" in out.metrics and out.fired.shape == (48,)
    loaded = Sae.load(sae.save(tmp_path / name))
    assert loaded.cfg == cfg
    x = torch.randn(10, 16)
    whole = loaded.reconstruct(x)
    torch.testing.assert_close(loaded.reconstruct(x[4:5]), whole[4:5], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(whole, sae.eval().reconstruct(x), rtol=1e-5, atol=1e-5)


def test_unknown_method_names_fail_with_a_suggestion():
    with pytest.raises(ConfigError, match="did you mean 'batchtopk'"):
        get_method("batchtop")
    with pytest.raises(ConfigError, match="did you mean"):
        SaeConfig.make("jumprelux")


class DoubledTopK(TopK):
    """A made-up method for the test below: TopK whose code values are doubled."""

    def values(self, pre, code, sae):
        return 2 * torch.relu(pre)


@pytest.fixture
def doubled_topk():
    method = register_method(
        Method(
            name="doubled_topk_test",
            params=TopKParams,
            activation=DoubledTopK,
            objective=ReconstructionAuxK,
            summary="test-only method",
        )
    )
    yield method
    del METHODS[method.name]


def test_a_new_method_is_one_declaration_outside_the_library(doubled_topk, tmp_path):
    """Declared in this test module alone: configs, the step, saving and loading all pick it up."""
    from saekit.config import TrainConfig, load_config

    cfg = load_config(TrainConfig, None, ["sae.method=doubled_topk_test", "sae.k=3", "sae.d_sae=24"]).sae
    sae = Sae(8, cfg)
    optimizer = make_optimizer(sae, lr=1e-3)
    out = training_step(sae, make_objective(cfg), optimizer, Batch(torch.randn(32, 8)), mse_scale=1.0)
    assert out.metrics["l0"] <= 3
    x = torch.randn(5, 8)
    code = sae.eval().encode(x)
    torch.testing.assert_close(code.values, 2 * torch.relu(code.values / 2))
    assert Sae.load(sae.save(tmp_path / "new")).cfg.method == "doubled_topk_test"


def test_trainer_and_benchmark_call_the_same_step_function(monkeypatch):
    import saekit.train.step as step_module
    import saekit.train.trainer as trainer_module
    from saekit.bench.step import StepBenchConfig, make_saekit_step

    calls = []
    real = step_module.training_step

    def counting(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(step_module, "training_step", counting)
    monkeypatch.setattr(trainer_module, "training_step", counting)
    step = make_saekit_step(
        StepBenchConfig(d_in=16, d_sae=64, k=4, batch=32, method="batchtopk"), torch.randn(32, 16), True
    )
    step()
    assert len(calls) == 1 and type(calls[0]).__name__ == "ReconstructionAuxK"
    assert trainer_module.Trainer.step.__code__.co_names.count("training_step") == 1
