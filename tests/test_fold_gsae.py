"""Folding the activation scale into a g-SAE keeps its gradient-weighted selection for raw inputs."""

import torch

from saekit.config import SaeConfig
from saekit.sae import Sae
from saekit.types import Batch


def test_folded_gsae_selects_the_same_latents_on_raw_inputs():
    torch.manual_seed(0)
    c = 0.3
    sae = Sae(12, SaeConfig.make("gsae", k=3, d_sae=40, grad_beta=5.0), act_scale=c).eval()
    with torch.no_grad():
        sae.b_enc.normal_()
        sae.b_dec.normal_()
    x, g = torch.randn(6, 12) * 4, torch.randn(6, 12)
    scaled = sae.encode_normalized(x * c, Batch(acts=x * c, grads=g / c), training=False)
    folded = sae.fold_act_scale()
    raw = folded.encode(x, Batch(acts=x, grads=g), training=False)
    plain = folded.encode(x, Batch(acts=x), training=False)  # no gradients: plain TopK

    def rows(code):
        return [
            sorted(code.indices[a:b].tolist())
            for a, b in zip(code.offsets[:-1], code.offsets[1:], strict=True)
        ]

    assert rows(raw) == rows(scaled)
    assert rows(plain) != rows(scaled), "beta must matter here, or the test proves nothing"
    torch.testing.assert_close(raw.values * c, scaled.values, rtol=1e-5, atol=1e-6)
