"""Many variants of a prompt's last position in one forward pass, the prefix computed once.

An intervention at the last position of a prompt changes nothing at the earlier positions (attention is
causal). So instead of `n` copies of the whole prompt, one sequence is run: the prefix (all positions but
the last) once, then `n` copies of the last token, each copy at the last position's position id and
attending to the prefix and to itself only (a 4-D additive attention mask). Every copy then computes
exactly what the last position of a full copy of the prompt would, at (T − 1 + n) tokens instead of n·T,
and only n + T − 1 positions go through the unembedding.

The mask and position ids are the model's ordinary forward arguments, so this works for any model that
honours them; `packed_matches_full` checks that on the model at hand before it is relied upon.

    logits = last_position_variants(model, tokens, 64, hookpoint, fn)      # [64, vocab]
    packed_matches_full(model, tokens)                                      # True on embedded and tiny
    max_variants(model, tokens)                                             # n_ctx − (seq − 1)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from saekit.models.hooks import logits_of, run_with_splice

logger = logging.getLogger(__name__)


def packed_layout(
    tokens: Int[Tensor, "1 seq"], variants: int
) -> tuple[Int[Tensor, "1 packed"], Int[Tensor, "1 packed"], Float[Tensor, "1 1 packed packed"]]:
    """(token ids, position ids, additive attention mask) of the prefix followed by `variants` copies of
    the last token; the mask is 0 where attention is allowed and −inf elsewhere."""
    prefix = tokens.shape[1] - 1
    size = prefix + variants
    ids = torch.cat([tokens[0, :prefix], tokens[0, -1:].expand(variants)])[None]
    positions = torch.cat([torch.arange(prefix), torch.full((variants,), prefix)])[None]
    allowed = torch.zeros(size, size, dtype=torch.bool)
    allowed[:prefix, :prefix] = torch.ones(prefix, prefix, dtype=torch.bool).tril()
    allowed[prefix:, :prefix] = True
    copies = torch.arange(prefix, size)
    allowed[copies, copies] = True
    mask = torch.zeros(1, 1, size, size).masked_fill(~allowed, -torch.inf)
    return ids, positions, mask


def max_variants(model: Any, tokens: Int[Tensor, "1 seq"]) -> int:
    """How many copies of the last position fit beside the prefix in the model's context (n_ctx)."""
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    return max(0, int(n_ctx) - (tokens.shape[1] - 1)) if n_ctx else 1 << 30


def last_position_variants(
    model: Any,
    tokens: Int[Tensor, "1 seq"],
    variants: int,
    hookpoint: str,
    fn: Callable[[Tensor], Tensor],
) -> Float[Tensor, "variants vocab"]:
    """Next-token logits of `variants` copies of the prompt's last position, with the activation of the
    packed sequence at `hookpoint` ([1, seq − 1 + variants, d]: prefix first, then the copies) replaced
    by `fn(act)`; `fn` must leave the prefix positions as they are for the result to be exact."""
    ids, positions, mask = packed_layout(tokens, variants)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    logits = run_with_splice(
        model,
        ids,
        hookpoint,
        fn,
        attention_mask=mask.to(device=device, dtype=dtype),
        position_ids=positions.to(device),
    )
    return logits[0, tokens.shape[1] - 1 :]


def packed_matches_full(model: Any, tokens: Int[Tensor, "1 seq"]) -> bool:
    """Whether the packed pass reproduces the ordinary forward on this model (up to rounding): a model that
    ignored the custom mask or the position ids would not. Two copies, no intervention."""
    if tokens.shape[1] < 2 or max_variants(model, tokens) < 2:
        return False
    full = logits_of(model, tokens)[0, -1]
    ids, positions, mask = packed_layout(tokens, 2)
    device = full.device
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        packed = model(
            ids.to(device), attention_mask=mask.to(device, dtype), position_ids=positions.to(device)
        )
    packed = packed[0, -2:].to(full.dtype)
    # fp32 reductions in another order differ by ~1e-6 of the logit scale; bf16 by ~1e-2
    rel = 1e-4 if dtype in (torch.float32, torch.float64) else 3e-2
    tol = rel * max(1.0, float(full.abs().max()))
    ok = bool((packed - full).abs().max() <= tol)
    if not ok:
        logger.warning(
            "the shared-prefix pass does not reproduce the full forward on this model (max |Δlogit| %.3g); "
            "using full forwards instead",
            float((packed - full).abs().max()),
        )
    return ok
