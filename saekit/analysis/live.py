"""Live encoding of arbitrary text: which latents fire on which token (for heat-maps and probing).

acts = encode_text(model, sae, "The cat sat on the mat.")
acts.tokens            # decoded token strings, BOS first
acts.values            # [T, top_m] activations of the text's top_m latents (acts.latents)
acts.per_token[3]      # [(latent, value), ...] strongest latents at token 3
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from saekit.analysis.format import prompt_tokens


@dataclass
class TokenActivations:
    """SAE activations of one text. Special positions (BOS) are encoded but never rank a latent."""

    token_ids: list[int]
    tokens: list[str]
    special: Bool[Tensor, " seq"]
    latents: list[int]
    """The top_m latents by max activation over the text's non-special tokens, strongest first."""
    values: Float[Tensor, "seq top_m"]
    """values[t, j] = activation of latents[j] at token t (0 where it is not active)."""
    per_token: list[list[tuple[int, float]]]
    """For each token, its `per_token` strongest active latents as (latent, value)."""


@torch.no_grad()
def encode_text(model: Any, sae: Any, text: str, *, top_m: int = 16, per_token: int = 8) -> TokenActivations:
    """Run the model on `text` (BOS first), encode the hook activation with the SAE (inference mode)."""
    from saekit.models import capture, special_token_mask, tokenizer_of

    tokens = prompt_tokens(model, text)
    acts = capture(model, tokens, [sae.hookpoint]).acts[sae.hookpoint][0]
    dense = dense_code_of(sae, acts)
    special = special_token_mask(tokens, model)[0].cpu()
    dense[special] = 0.0  # BOS activations are outliers; they would dominate every ranking
    strength = dense.max(0).values
    m = min(top_m, int((strength > 0).sum()))
    chosen = torch.topk(strength, m).indices if m > 0 else torch.zeros(0, dtype=torch.long)
    tok = tokenizer_of(model)
    ids = tokens[0].tolist()
    return TokenActivations(
        token_ids=ids,
        tokens=[tok.decode([i]) for i in ids],
        special=special,
        latents=chosen.tolist(),
        values=dense[:, chosen],
        per_token=_strongest_per_token(dense, per_token),
    )


def dense_code_of(sae: Any, acts: Float[Tensor, "rows d_in"]) -> Float[Tensor, "rows d_sae"]:
    """Dense [rows, d_sae] inference-mode code of raw activations (small inputs: one text, tests)."""
    code = sae.encode(acts.float(), training=False)
    dense = torch.zeros(code.batch_size, sae.d_sae)
    dense.index_put_(
        (code.row_ids().cpu(), code.indices.cpu()), code.values.detach().float().cpu(), accumulate=True
    )
    return dense


def _strongest_per_token(dense: Float[Tensor, "seq d_sae"], n: int) -> list[list[tuple[int, float]]]:
    values, idx = torch.topk(dense, min(n, dense.shape[1]), dim=1)
    out = []
    for vals, ids in zip(values.tolist(), idx.tolist(), strict=True):
        out.append([(i, v) for i, v in zip(ids, vals, strict=True) if v > 0])
    return out
