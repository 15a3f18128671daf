"""Hook points: listing, validation, activation (and gradient) capture, splicing, logit lens.

This is the only place that attaches hooks to a TransformerLens model. Everything else passes hook names
(`"blocks.9.hook_resid_post"`) and receives plain fp32 tensors.

    validate_hookpoints(model, ["blocks.9.hook_resid_post"])
    cap = capture(model, tokens, ["blocks.9.hook_resid_post"], with_grads=True)   # acts + dL/dx
    logits = run_with_splice(model, tokens, "blocks.9.hook_resid_post", lambda x: sae(x))
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from saekit.errors import DataError, HookpointError
from saekit.models.loading import load_spec, model_id
from saekit.models.tokens import bos_token_id

logger = logging.getLogger(__name__)


@dataclass
class Capture:
    """Activations (and optionally dL/dx) at several hook points from one pass; fp32, detached."""

    acts: dict[str, Float[Tensor, "batch seq d"]]
    grads: dict[str, Float[Tensor, "batch seq d"]] | None = None
    """Gradient of the summed next-token CE w.r.t. each activation; the last position is exactly 0."""


class _StopForward(Exception):
    """Raised from a hook once every requested activation is captured, to skip the rest of the model."""


# ---------------------------------------------------------------------------------------- names


def list_hookpoints(model: Any) -> list[str]:
    """Every hook name the model accepts (classic TransformerLens aliases included), in layer order."""
    return sorted(model.hook_dict, key=lambda name: hook_layer(model, name))


def hook_layer(model: Any, name: str) -> int:
    """Depth of a hook: block index; embedding-side hooks -1; final norm / unembedding n_layers."""
    match = re.match(r"blocks\.(\d+)\.", name)
    if match:
        return int(match.group(1))
    if name.startswith(("ln_final", "unembed", "hook_unembed")):
        return int(model.cfg.n_layers)
    return -1


def validate_hookpoints(model: Any, names: Sequence[str]) -> None:
    """Raise HookpointError for the first unknown name, suggesting the three closest valid names."""
    valid = model.hook_dict
    for name in names:
        if name not in valid:
            close = difflib.get_close_matches(name, list(valid), n=3, cutoff=0.0)
            raise HookpointError(
                f"model {model_id(model)} has no hook point {name!r}; closest: {', '.join(close)}. "
                f"List them all with `saekit hooks {load_spec(model)}`"
            )


# ---------------------------------------------------------------------------------------- capture


def capture(
    model: Any,
    tokens: Int[Tensor, "batch seq"],
    hookpoints: Sequence[str],
    *,
    with_grads: bool = False,
    autocast_bf16: bool = False,
) -> Capture:
    """Activations at `hookpoints` from one forward pass (plus dL/dx when `with_grads`).

    Without gradients the forward stops as soon as the deepest requested hook has fired. Measured on the
    embedded model (30 layers, 16 x 128 tokens, 2 CPU threads, min of 3): stopping after blocks.9 took
    2.6 s vs 9.1 s for the full forward (3.6x), the saving being the 20 later blocks plus the 49k-vocab
    unembedding; bf16 autocast brought the stopped pass to 1.6 s. With gradients the whole model runs
    (the loss needs the logits), in fp32 even if `autocast_bf16`: bf16 gradients underflow
    (algorithms.md §5.3).
    """
    names = list(dict.fromkeys(hookpoints))
    validate_hookpoints(model, names)
    tokens = tokens.to(_device_of(model))
    if with_grads:
        if autocast_bf16:
            logger.warning("autocast_bf16 is ignored while capturing gradients: they are computed in fp32")
        return _capture_with_grads(model, tokens, names)
    acts: dict[str, Tensor] = {}

    def make_hook(name: str) -> Callable:
        def hook(act: Tensor, hook: Any) -> None:
            # Stop once *all* hooks fired, rather than on the one with the largest layer index: equivalent
            # when layers are ordered, and still right for two hooks inside the same block.
            last = len(acts) + 1 == len(names)
            # Copy only what later layers still run after: they could update the residual stream in place.
            # The hook that stops the forward is the last writer of its tensor, so it is kept as is (no
            # copy of the largest capture of a one-hook collection).
            acts[name] = act.detach().to(torch.float32, copy=not last)
            if last:
                raise _StopForward

        return hook

    autocast = torch.autocast(tokens.device.type, dtype=torch.bfloat16, enabled=autocast_bf16)
    hooks = model.hooks(fwd_hooks=[(n, make_hook(n)) for n in names])
    with torch.no_grad(), autocast, hooks, contextlib.suppress(_StopForward):
        model(tokens)
    _check_all_fired(names, acts)
    return Capture(acts={n: acts[n] for n in names})


def forward_to(model: Any, tokens: Int[Tensor, "batch seq"], hookpoints: Sequence[str]) -> None:
    """The bare forward pass up to the last of `hookpoints`, keeping nothing: what `capture` costs at
    least (the baseline `saekit bench collection=true` compares collection with)."""
    names = set(hookpoints)
    fired: set[str] = set()

    def make_hook(name: str) -> Callable:
        def hook(act: Tensor, hook: Any) -> None:
            fired.add(name)
            if fired == names:
                raise _StopForward

        return hook

    hooks = model.hooks(fwd_hooks=[(n, make_hook(n)) for n in names])
    with torch.no_grad(), hooks, contextlib.suppress(_StopForward):
        model(tokens.to(_device_of(model)))


def hook_widths(model: Any, names: Sequence[str]) -> dict[str, int]:
    """The width of each hook's activation, from one 2-token forward pass ([BOS, BOS]); it also proves the
    capture path works before any long pass or any file is written."""
    bos = bos_token_id(model)
    probe = capture(model, torch.tensor([[bos, bos]]), list(names))
    return {name: int(probe.acts[name].shape[-1]) for name in names}


def _capture_with_grads(model: Any, tokens: Tensor, names: list[str]) -> Capture:
    acts: dict[str, Tensor] = {}

    def make_hook(name: str) -> Callable:
        def hook(act: Tensor, hook: Any) -> Tensor:
            # The layers before the shallowest hook run without autograd (no graph, no saved tensors), so
            # the backward stops there by construction: the first hook to fire switches grad mode on and
            # makes its activation the leaf. Deeper ones already depend on it; keep them in the graph
            # (detaching would cut the path from the shallow hook through the deep one).
            if not act.requires_grad:
                torch.set_grad_enabled(True)
                act = act.detach().requires_grad_(True)
            acts[name] = act
            return act

        return hook

    # no_grad's exit restores the caller's grad mode, whatever the first hook switched on.
    with torch.no_grad(), model.hooks(fwd_hooks=[(n, make_hook(n)) for n in names]):
        logits = model(tokens)
    _check_all_fired(names, acts)
    # Sum, not mean: each token's gradient is that of its own next-token loss, independent of batch size.
    with torch.enable_grad():
        loss = F.cross_entropy(
            _at_least_fp32(logits[:, :-1].flatten(0, 1)), tokens[:, 1:].flatten(), reduction="sum"
        )
        raw = torch.autograd.grad(loss, [acts[n] for n in names], allow_unused=True)
    grads = {}
    for name, grad in zip(names, raw, strict=True):
        grad = torch.zeros_like(acts[name]) if grad is None else grad
        grad = grad.detach().to(torch.float32)  # autograd's result is a fresh tensor: no copy needed
        grad[:, -1] = 0.0  # no label at the last position (the causal graph already gives 0; make it exact)
        grads[name] = grad
    # The forward is over: nothing writes these tensors any more, so they are handed out without a copy.
    return Capture(acts={n: acts[n].detach().to(torch.float32) for n in names}, grads=grads)


def _check_all_fired(names: list[str], acts: dict[str, Tensor]) -> None:
    missing = [n for n in names if n not in acts]
    if missing:
        raise HookpointError(
            f"hook point(s) {missing} exist but did not fire during the forward pass; "
            "pick another hook point (e.g. blocks.N.hook_resid_post)"
        )


# ---------------------------------------------------------------------------------------- splicing


def run_with_splice(
    model: Any,
    tokens: Int[Tensor, "batch seq"],
    hookpoint: str,
    fn: Callable[[Tensor], Tensor],
    **forward_kwargs: Any,
) -> Float[Tensor, "batch seq vocab"]:
    """Logits (fp32; fp64 for a fp64 model) with the activation at `hookpoint` replaced by `fn(act)`.

    Gradient mode is the caller's: wrap in torch.no_grad() for evaluation. `forward_kwargs` (e.g.
    `attention_mask`, `position_ids`) go to the model's forward unchanged.
    """
    validate_hookpoints(model, [hookpoint])

    def hook(act: Tensor, hook: Any) -> Tensor:
        out = fn(act)
        if out.shape != act.shape:
            raise DataError(
                f"splice function returned shape {tuple(out.shape)} at {hookpoint}, "
                f"expected {tuple(act.shape)}"
            )
        return out.to(act.dtype)

    with model.hooks(fwd_hooks=[(hookpoint, hook)]):
        logits = model(tokens.to(_device_of(model)), **forward_kwargs)
    return _at_least_fp32(logits)


def logits_of(model: Any, tokens: Int[Tensor, "batch seq"]) -> Float[Tensor, "batch seq vocab"]:
    """Clean logits (fp32; fp64 for a fp64 model), no hooks, no gradients."""
    with torch.no_grad():
        return _at_least_fp32(model(tokens.to(_device_of(model))))


def final_norm_and_unembed(model: Any) -> Callable[[Tensor], Tensor]:
    """A function mapping residual-stream vectors [..., d_model] to logits [..., vocab] (logit lens).

    Applies the model's final norm then the unembedding, so a latent's decoder direction can be read
    as "which tokens it promotes". Leading dimensions are flattened through a [1, N, d] batch because
    model components expect a (batch, position) layout.
    """

    def apply(x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... vocab"]:
        lead = x.shape[:-1]
        flat = x.reshape(1, -1, x.shape[-1]).to(_device_of(model))
        with torch.no_grad():
            out = model.unembed(model.ln_final(flat))
        return _at_least_fp32(out.reshape(*lead, out.shape[-1]))

    return apply


def _at_least_fp32(x: Tensor) -> Tensor:
    """Upcast bf16/fp16 results for fp32 metrics, but keep fp64 (double-precision gradient checks)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _device_of(model: Any) -> torch.device:
    return next(model.parameters()).device
