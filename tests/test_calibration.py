"""Threshold calibration (saekit.eval.calibrate): threshold-mode methods hit their target L0 on fresh rows."""

import pytest
import torch
from sae_checks import train_on_synthetic

from saekit.eval.calibrate import calibrate_thresholds_, estimator_for, midway_below_top
from saekit.sae import Sae, SaeConfig
from saekit.synthetic import SparseDictionaryData

K = 4
METHODS = {
    "batchtopk": ("global_quantile", {"k": K}),
    "mutual_choice": ("global_quantile", {"k": K}),
    "feature_choice": ("per_latent_quantile", {"k": K}),
    "jumprelu": ("threshold_scale", {"target_l0": K, "threshold_lr_scale": 1.0}),
}


def _chunks(x, size=2048):
    return list(x.split(size))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_calibrated_thresholds_reach_the_target_l0_within_2_percent_on_fresh_rows(method):
    torch.manual_seed(0)
    estimator, keys = METHODS[method]
    data = SparseDictionaryData(d_in=32, n_features=64, k_active=3, seed=1, noise=0.02)
    cfg = SaeConfig.make(method, d_sae=128, normalize_activations="none", **keys)
    sae = train_on_synthetic(cfg, data, steps=10, batch_rows=256)  # a few steps: θ learned, still off
    assert estimator_for(sae) == estimator
    report = calibrate_thresholds_(sae, _chunks(data.sample(8192)), max_rows=8192)
    assert report["estimator"] == estimator and report["rows"] == 8192 and report["target_l0"] == K
    assert abs(report["l0_after"] - K) <= 0.02 * K  # on the calibration rows themselves
    fresh = sae.encode(data.sample(16384), training=False).l0_per_row().float().mean().item()
    assert abs(fresh - K) <= 0.02 * K, (method, report, fresh)


def test_topk_has_nothing_to_calibrate():
    sae = Sae(8, SaeConfig.make("topk", k=2, d_sae=16))
    assert estimator_for(sae) is None
    assert calibrate_thresholds_(sae, [torch.randn(10, 8)], max_rows=10) is None


def test_global_quantile_on_a_hand_computed_case():
    # pre-activations of 2 rows (identity encoder, no biases): 6 positive values; k=1 -> 2 must fire
    sae = Sae(3, SaeConfig.make("batchtopk", k=1, d_sae=3, normalize_activations="none"))
    with torch.no_grad():
        sae.W_enc_T.copy_(torch.eye(3))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    x = torch.tensor([[5.0, 1.0, 2.0], [4.0, 3.0, 0.5]])
    report = calibrate_thresholds_(sae, [x], max_rows=2)
    assert torch.allclose(sae.threshold, torch.full((3,), 3.5))  # midway between 4 (2nd) and 3 (3rd)
    assert report["l0_after"] == 1.0


def test_midway_cut_streams_over_chunks_and_handles_too_few_positives():
    values = [torch.tensor([1.0, 9.0]), torch.tensor([5.0, 7.0, 3.0])]
    assert midway_below_top(values, 2) == 6.0  # 9, 7 above; 5 below
    assert midway_below_top([torch.tensor([2.0, -1.0])], 2) == 0.0  # only one positive: keep all positive
