"""Latent ablation: what the model loses on a text when chosen latents are taken out of its hook activation.

At the SAE's hook point, each listed latent's contribution f_i(x)·W_dec[i] (in raw space, divided by
act_scale) is subtracted from x at every position; everything else — other latents, b_dec and the SAE's
error — stays, so only those latents' share of the activation is removed. The result holds the next-token
loss of every predicted token with and without, so one sees where the latents mattered.

    result = ablate(model, sae, "The capital of France is Paris.", [42])
    result.delta                   # per predicted token: ablated − clean loss (nats)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from saekit.analysis.format import prompt_tokens
from saekit.analysis.live import dense_code_of
from saekit.analysis.steering import check_latents


@dataclass
class AblationResult:
    """Per predicted token (the text's tokens after BOS): next-token loss without and with the ablation."""

    latents: list[int]
    tokens: list[str]
    clean_loss: list[float]
    ablated_loss: list[float]

    @property
    def delta(self) -> list[float]:
        """Ablated minus clean loss per token (nats): > 0 where the latents helped predict it."""
        return [a - c for a, c in zip(self.ablated_loss, self.clean_loss, strict=True)]

    @property
    def mean_delta(self) -> float:
        return sum(self.delta) / max(len(self.delta), 1)


@torch.no_grad()
def ablate(model: Any, sae: Any, text: str, latents: Sequence[int]) -> AblationResult:
    """Next-token losses on `text` (BOS first) with `latents` removed at the SAE's hook point, and without."""
    from saekit.models import logits_of, run_with_splice, tokenizer_of

    check_latents(sae, {int(i): 0.0 for i in latents})
    ids = torch.as_tensor([int(i) for i in latents], dtype=torch.long)
    directions = sae.W_dec[ids].detach().float() / float(sae.act_scale)  # [m, d_in], raw space

    def remove(act: Tensor) -> Tensor:
        rows = act.reshape(-1, act.shape[-1]).float()
        strength = dense_code_of(sae, rows)[:, ids].to(rows.device)  # [rows, m]
        return (rows - strength @ directions.to(rows.device)).to(act.dtype).reshape(act.shape)

    tokens = prompt_tokens(model, text)
    clean = _token_losses(logits_of(model, tokens), tokens)
    ablated = _token_losses(run_with_splice(model, tokens, sae.hookpoint, remove), tokens)
    tok = tokenizer_of(model)
    return AblationResult(
        latents=ids.tolist(),
        tokens=[tok.decode([i]) for i in tokens[0, 1:].tolist()],
        clean_loss=clean.tolist(),
        ablated_loss=ablated.tolist(),
    )


def _token_losses(logits: Tensor, tokens: Tensor) -> Tensor:
    """Cross-entropy of each next token (fp32, CPU): position t predicts token t + 1."""
    return F.cross_entropy(logits[0, :-1].float().cpu(), tokens[0, 1:].cpu(), reduction="none")
