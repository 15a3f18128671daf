"""Subspace-constrained init: the Subspace-init row of algorithms.md §12 (rows inside span(U_r), minimal r
reaching the target variance, fewer dead latents than random init on data confined to a 60 % subspace),
and the `sae.init=subspace` path through the trainer for more than one method."""

import pytest
import torch

from saekit.activations import CacheWriter
from saekit.config import SaeConfig, TrainConfig
from saekit.errors import ConfigError, DataError
from saekit.sae import Sae, estimate_act_scale, init_sae_from_data_, make_objective, mse_scale_from_sample
from saekit.sae.subspace import init_subspace_, principal_subspace
from saekit.synthetic import SparseDictionaryData
from saekit.train.sources import open_training_source
from saekit.train.step import training_step
from saekit.train.trainer import Trainer
from saekit.types import Batch


def low_rank_source(d_in=32, fraction=0.6, seed=0, n_features=64):
    """Sparse non-negative features living in a random `fraction·d_in`-dim subspace, plus an offset."""
    rank = int(fraction * d_in)
    data = SparseDictionaryData(d_in=rank, n_features=n_features, k_active=3, seed=seed)
    gen = torch.Generator().manual_seed(seed + 100)
    basis = torch.linalg.qr(torch.randn(d_in, rank, generator=gen)).Q.t()  # [rank, d_in], orthonormal rows
    offset = torch.randn(d_in, generator=gen)
    return (lambda n: data.sample(n) @ basis + offset), basis


def off_subspace_ratio(rows, basis):
    """‖d − U Uᵀ d‖ / ‖d‖ per row, for U with orthonormal columns (basis: [d_in, r])."""
    rows = rows.double()
    inside = rows @ basis @ basis.t()
    return (rows - inside).norm(dim=1) / rows.norm(dim=1)


# ----------------------------------------------------------------------------------- the basis


def test_chosen_rank_is_the_smallest_reaching_the_target_variance():
    gen = torch.Generator().manual_seed(0)
    spectrum = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.5, 0.25, 0.1, 0.05])
    rotation = torch.linalg.qr(torch.randn(8, 8, generator=gen)).Q
    x = (torch.randn(20000, 8, generator=gen) * spectrum.sqrt()) @ rotation.t() + 3.0
    xc = (x - x.mean(0)).double()
    total = xc.pow(2).sum()
    for target in (0.5, 0.9, 0.99, 0.999):
        basis, rank, explained = principal_subspace(x, target)
        assert basis.shape == (8, rank)
        torch.testing.assert_close(basis.t() @ basis, torch.eye(rank, dtype=basis.dtype), rtol=0, atol=1e-10)
        share = lambda r: float((xc @ principal_subspace(x, 1.0)[0][:, :r]).pow(2).sum() / total)
        assert share(rank) >= target and explained == pytest.approx(share(rank), rel=1e-9)
        assert rank == 1 or share(rank - 1) < target  # the smallest such rank
    assert principal_subspace(x, 0.5)[1] < principal_subspace(x, 0.99)[1] <= 8


def test_bad_inputs_raise_with_the_fix():
    with pytest.raises(ConfigError, match="subspace_variance"):
        principal_subspace(torch.randn(100, 4), 1.5)
    with pytest.raises(DataError, match="zero variance"):
        principal_subspace(torch.ones(50, 4), 0.9)
    with pytest.raises(DataError):
        principal_subspace(torch.randn(1, 4), 0.9)


# ----------------------------------------------------------------------------------- the init


def test_every_decoder_row_lies_in_the_principal_subspace():
    sample, true_basis = low_rank_source()
    x = sample(4000)
    sae = Sae(32, SaeConfig.make("topk", d_sae=200, k=4, init="subspace", subspace_variance=0.99))
    init_sae_from_data_(sae, x)
    basis, rank, _ = principal_subspace(x, 0.99)
    assert rank <= 19  # the data has 19 dimensions; 99 % of the variance needs at most those
    ratio = off_subspace_ratio(sae.W_dec.detach(), basis)
    assert ratio.max() < 1e-5
    assert off_subspace_ratio(sae.W_dec.detach(), true_basis.t().double()).max() < 1e-4
    assert (sae.W_dec.norm(dim=1) - 1).abs().max() < 1e-6
    assert torch.equal(sae.W_enc, sae.W_dec.t()) and not sae.b_enc.any()
    assert sae.b_dec.norm() > 1  # b_dec still initialised from the data (geometric median of x)
    # A random tied init is nowhere near the subspace (so the assertion above can fail).
    random_init = Sae(32, SaeConfig.make("topk", d_sae=200, k=4))
    assert off_subspace_ratio(random_init.W_dec.detach(), basis).min() > 0.1


def test_returns_rank_and_respects_the_generator():
    x = low_rank_source()[0](3000)
    a, b = (Sae(32, SaeConfig.make("topk", d_sae=50, k=4, init="subspace")) for _ in range(2))
    rank_a = init_subspace_(a, x, torch.Generator().manual_seed(5))
    rank_b = init_subspace_(b, x, torch.Generator().manual_seed(5))
    assert rank_a == rank_b and torch.equal(a.W_dec, b.W_dec)


def dead_fraction_after_training(init, seed=0, steps=150):
    torch.manual_seed(seed)
    sample, _ = low_rank_source(seed=seed)
    sae = Sae(32, SaeConfig.make("topk", k=2, d_sae=512, k_aux=0, init=init))
    x0 = sample(4096)
    sae.act_scale = estimate_act_scale(x0, "mean_norm_sqrt_d")
    init_sae_from_data_(sae, sae.scale_input(x0))
    objective = make_objective(sae.cfg)
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-3)
    scale = mse_scale_from_sample(sae.scale_input(x0))
    fired = torch.zeros(512, dtype=torch.bool)
    for step in range(steps):
        out = training_step(sae, objective, optimizer, Batch(sample(256)), mse_scale=scale)
        if step >= steps - 20:  # dead = silent over the last 20 steps (5120 tokens)
            fired |= out.fired
    return 1.0 - fired.float().mean().item()


def test_fewer_dead_latents_than_random_init_on_data_in_a_60_percent_subspace():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: far faster on one thread of a busy 2-core machine
    try:
        tied, subspace = dead_fraction_after_training("tied"), dead_fraction_after_training("subspace")
    finally:
        torch.set_num_threads(threads)
    assert tied > 0.05, tied  # the setting really produces dead latents under random init
    assert subspace < 0.5 * tied, (subspace, tied)


# ------------------------------------------------------------------------------- trainer path


@pytest.mark.parametrize(
    ("method", "keys"), [("topk", {"k": 3, "k_aux": 0}), ("mp", {"steps": 3})], ids=["topk", "mp"]
)
def test_trainer_initialises_inside_the_subspace_of_its_own_sample(tmp_path, method, keys):
    sample, _ = low_rank_source(d_in=16, seed=2)
    header = {
        "model_id": "synthetic",
        "hookpoint": "blocks.0.hook_resid_post",
        "d_in": 16,
        "dtype": "float32",
        "context_length": 8,
        "tokenizer_fingerprint": "t",
        "corpus_fingerprint": "c",
        "collect_config": {},
        "shard_tokens": 500,
        "has_grads": False,
        "first_sequence": 0,
    }
    writer = CacheWriter.create(tmp_path / "cache" / "blocks.0.hook_resid_post", header)
    ids = torch.arange(1500)
    writer.add(sample(1500), ids % 97, ids // 8, ids % 8)
    writer.finish(num_sequences=200, next_sequence=200, excluded={})
    cfg = TrainConfig(
        sae=SaeConfig.make(method, d_sae=64, init="subspace", **keys),
        cache_dir=str(tmp_path / "cache"),
        run_dir=str(tmp_path / "run"),
        batch_size=64,
        norm_estimation_tokens=1000,
        progress=False,
    )
    source = open_training_source(cfg)
    trainer = Trainer.create(cfg, source, tmp_path / "run")
    basis, rank, explained = principal_subspace(trainer.sae.scale_input(source.sample), 0.99)
    assert rank <= 9 and explained >= 0.99
    assert off_subspace_ratio(trainer.sae.W_dec.detach(), basis).max() < 1e-5
    trainer.step(source.next_batch())  # and it trains
    assert (trainer.sae.W_dec.norm(dim=1) - 1).abs().max() < 1e-5
