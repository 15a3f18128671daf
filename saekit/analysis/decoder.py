"""Weight-only latent properties: logit effects through the model's final norm + unembedding, and nearest
latents by decoder cosine. Both run in blocks of latents, so nothing [d_sae, d_sae] or [d_sae, vocab] is
ever held in memory.

    effects = logit_effects(sae.W_dec, final_norm_and_unembed(model), top_n=10, lens_k=20)
    idx, cos = decoder_neighbours(sae.W_dec, top_n=10)
    probs = logit_lens(model, sae, latent)            # softmax(W_U · FinalNorm(W_dec[i]))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

LATENT_BLOCK = 512
"""Latents per block: a [512, 49152] fp32 logit block is ~100 MB, a [512, d_sae] cosine block less."""


@torch.no_grad()
def logit_effects(
    W_dec: Float[Tensor, "d_sae d_in"],
    unembed: Callable[[Tensor], Tensor],
    *,
    top_n: int = 10,
    lens_k: int = 20,
    block: int = LATENT_BLOCK,
    progress: str | None = None,
) -> dict[str, Tensor]:
    """Per latent: the `top_n` most promoted and most suppressed tokens of W_dec[i] read through the final
    norm and unembedding (`promoted_ids/logits`, `suppressed_ids/logits`), and the `lens_k` tokens of
    largest logit-lens probability (`lens_ids`, the set T_i of algorithms.md §9.2). `progress`: the name
    of a progress bar over latents (None: no bar)."""
    top = max(top_n, lens_k)
    parts: dict[str, list[Tensor]] = {"up_ids": [], "up": [], "down_ids": [], "down": []}
    bar = tqdm(total=W_dec.shape[0], desc=progress, unit="latent", disable=progress is None)
    for lo in range(0, W_dec.shape[0], block):
        logits = unembed(W_dec[lo : lo + block].float()).float()
        up = torch.topk(logits, min(top, logits.shape[1]), dim=1)
        down = torch.topk(logits, min(top_n, logits.shape[1]), dim=1, largest=False)
        parts["up_ids"].append(up.indices)
        parts["up"].append(up.values)
        parts["down_ids"].append(down.indices)
        parts["down"].append(down.values)
        bar.update(logits.shape[0])
    bar.close()
    up_ids, up = torch.cat(parts["up_ids"]), torch.cat(parts["up"])
    return {
        "promoted_ids": up_ids[:, :top_n].to(torch.int32),
        "promoted_logits": up[:, :top_n],
        "suppressed_ids": torch.cat(parts["down_ids"]).to(torch.int32),
        "suppressed_logits": torch.cat(parts["down"]),
        # softmax is monotone, so the largest-probability tokens are the largest-logit tokens
        "lens_ids": up_ids[:, :lens_k].to(torch.int32),
    }


@torch.no_grad()
def decoder_neighbours(
    W_dec: Float[Tensor, "d_sae d_in"], *, top_n: int = 10, block: int = LATENT_BLOCK
) -> tuple[Int[Tensor, "d_sae top_n"], Float[Tensor, "d_sae top_n"]]:
    """The `top_n` other latents of highest decoder cosine similarity, computed block by block."""
    unit = torch.nn.functional.normalize(W_dec.float(), dim=1)
    d_sae = unit.shape[0]
    n = min(top_n, d_sae - 1)
    ids, sims = [], []
    for lo in range(0, d_sae, block):
        cos = unit[lo : lo + block] @ unit.T
        rows = torch.arange(cos.shape[0], device=cos.device)
        cos[rows, rows + lo] = -torch.inf  # a latent is not its own neighbour
        best = torch.topk(cos, n, dim=1)
        ids.append(best.indices)
        sims.append(best.values)
    return torch.cat(ids).to(torch.int32), torch.cat(sims)


@torch.no_grad()
def logit_lens(model: Any, sae: Any, latent: int) -> Float[Tensor, " vocab"]:
    """p_i = softmax(W_U · FinalNorm(W_dec[i])) over the vocabulary (fp32)."""
    from saekit.models import final_norm_and_unembed

    logits = final_norm_and_unembed(model)(sae.W_dec[latent].float())
    return torch.softmax(logits.float(), dim=-1)


def lens_top_ids(model: Any, sae: Any, latent: int, k: int = 20) -> Int[Tensor, " k"]:
    """T_i: the k tokens of largest logit-lens probability for `latent`."""
    return torch.topk(logit_lens(model, sae, latent), k).indices
