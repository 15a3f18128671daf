"""Activation rows of a model on token sequences (special positions dropped), chunk by chunk, fp32.

Held-out metrics that need x itself (threshold calibration, shrinkage, per-prefix FVU, absorption) read
their rows here, one forward pass per batch of sequences, stopped after the hooked layer.

    for x in activation_rows(model, tokens, "blocks.9.hook_resid_post", batch_size=8): ...   # [rows, d]
    x = take_rows(activation_rows(model, tokens, hookpoint, batch_size=8), 16384)        # one tensor
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor


@torch.no_grad()
def activation_rows(
    model: Any, tokens: Int[Tensor, "n seq"], hookpoint: str, *, batch_size: int
) -> Iterator[Float[Tensor, "rows d_in"]]:
    """fp32 activations at `hookpoint` of every non-special position, one chunk per forward batch."""
    from saekit.models import capture, special_token_mask

    for lo in range(0, tokens.shape[0], batch_size):
        batch = tokens[lo : lo + batch_size]
        acts = capture(model, batch, [hookpoint]).acts[hookpoint]
        keep = ~special_token_mask(batch, model).to(acts.device)
        yield acts[keep].float().cpu()


def take_rows(chunks: Iterable[Tensor], max_rows: int) -> Float[Tensor, "rows d_in"]:
    """The first `max_rows` rows of a stream of row chunks, as one tensor."""
    out, total = [], 0
    for chunk in chunks:
        out.append(chunk[: max_rows - total])
        total += len(out[-1])
        if total >= max_rows:
            break
    return torch.cat(out) if out else torch.empty(0)
