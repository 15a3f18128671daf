"""Independent forwards of each target format, written from the formats' own definitions (docs/interop.md)
and reading the files as the other tool would: raw tensor names, orientation and cfg keys, no saekit
reader and no `Sae`. A conversion is checked against these, so a reader/writer pair that agrees with itself
but not with the format cannot pass.

    z, x_hat = reference_forward("saelens", Path("out/topk-saelens"), x_raw)   # dense z [n, d_sae]
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from jaxtyping import Float
from safetensors.torch import load_file
from torch import Tensor

Output = tuple[Float[Tensor, "n d_sae"], Float[Tensor, "n d_in"]]


def reference_forward(fmt: str, path: Path, x: Float[Tensor, "n d_in"]) -> Output:
    """(dense latents, reconstruction) of raw activations `x` by the SAE in directory `path`."""
    forwards = {"saelens": saelens_forward, "sparsify": sparsify_forward, "dictionary_learning": dl_forward}
    with torch.no_grad():
        return forwards[fmt](Path(path), x.double())


def _topk_relu(h: Tensor, k: int) -> Tensor:
    top = h.topk(k, dim=-1)
    return torch.zeros_like(h).scatter(-1, top.indices, top.values.relu())


def saelens_forward(path: Path, x: Tensor) -> Output:
    """SAELens: sae_in = x·s − b_dec·apply_b_dec_to_input; h = sae_in W_enc + b_enc; topk (h·‖W_dec,i‖ when
    rescale_acts_by_decoder_norm, undone before decoding) / jumprelu / standard; x̂ = (z W_dec + b_dec)/s."""
    cfg = json.loads((path / "cfg.json").read_text())
    w = {n: t.double() for n, t in load_file(str(path / "sae_weights.safetensors")).items()}
    scale = 1.0
    if cfg.get("normalize_activations", "none") == "expected_average_only_in":
        scale = json.loads((path / "activation_scaler.json").read_text())["scaling_factor"]
    sae_in = x * scale - w["b_dec"] * float(cfg.get("apply_b_dec_to_input", True))
    h = sae_in @ w["W_enc"] + w["b_enc"]
    norms = w["W_dec"].norm(dim=-1)
    rescale = bool(cfg.get("rescale_acts_by_decoder_norm", False))
    if rescale:
        h = h * norms
    arch = cfg["architecture"]
    if arch == "topk":
        z = _topk_relu(h, int(cfg["k"]))
    elif arch == "standard":
        z = h.relu()
    else:  # jumprelu, and the batchtopk training forms' inference rule
        if "threshold" in w:
            theta = w["threshold"]
        elif "log_threshold" in w:
            theta = w["log_threshold"].exp()
        else:
            theta = w["topk_threshold"].reshape(-1)
        z = h.relu() * (h > theta)
    decoded = (z / norms if rescale else z) @ w["W_dec"] + w["b_dec"]
    return z, decoded / scale


def sparsify_forward(path: Path, x: Tensor) -> Output:
    """sparsify: z = topk(relu((x − b_dec) encoder.weightᵀ + encoder.bias)); x̂ = z W_dec + b_dec."""
    cfg = json.loads((path / "cfg.json").read_text())
    w = {n: t.double() for n, t in load_file(str(path / "sae.safetensors")).items()}
    pre = ((x - w["b_dec"]) @ w["encoder.weight"].T + w["encoder.bias"]).relu()
    z = _topk_relu(pre, int(cfg["k"]))
    return z, z @ w["W_dec"] + w["b_dec"]


def dl_forward(path: Path, x: Tensor) -> Output:
    """dictionary_learning: AutoEncoderTopK relu → top-k; BatchTopKSAE relu(h)·[relu(h) > θ];
    JumpReluAutoEncoder relu(h·[h > θ]) with h = x W_enc + b_enc (no b_dec subtraction)."""
    dict_class = json.loads((path / "config.json").read_text())["trainer"]["dict_class"]
    state = torch.load(str(path / "ae.pt"), map_location="cpu", weights_only=True)
    if dict_class == "JumpReluAutoEncoder":
        w = {n: t.double() for n, t in state.items()}
        h = x @ w["W_enc"] + w["b_enc"]
        z = (h * (h > w["threshold"])).relu()
        return z, z @ w["W_dec"] + w["b_dec"]
    w = {n: t.double() for n, t in state.items() if n != "k"}
    post = ((x - w["b_dec"]) @ w["encoder.weight"].T + w["encoder.bias"]).relu()
    if dict_class == "AutoEncoderTopK":
        z = _topk_relu(post, int(state["k"]))
    else:
        z = post * (post > w["threshold"])
    return z, z @ w["decoder.weight"].T + w["b_dec"]
