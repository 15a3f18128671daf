"""Finding latents the way a researcher asks: by a word whatever its spacing or case, or by a phrase.

Tokenizers spell one word several ways (' the', 'The', ' The', 'the'); `matching_tokens` returns all of
them, so a search for `the` finds latents tied to any. `phrase_latents` ranks the latents that fire on a
typed phrase by their activation relative to their own maximum over the indexed text, so a latent that
fires everywhere at a low level does not drown the ones specific to the phrase.

    ids = matching_tokens(index.vocab, "the")             # [(id, ' the'), (id, 'The'), ...]
    latents = index.find_by_token_ids([i for i, _ in ids], side="input")
    rows = phrase_latents(encode_text(model, sae, "Paris is", top_m=sae.d_sae), index.stats["max_activation"])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

MAX_MATCHES = 64
"""More spellings than this is a query too vague to be useful (e.g. a bare space); the first are kept."""


def normalised(token: str) -> str:
    """The comparison form of a token: surrounding whitespace dropped, case folded."""
    return token.strip().casefold()


def matching_tokens(vocab: Sequence[str], query: str) -> list[tuple[int, str]]:
    """(id, exact string) of every vocabulary entry equal to `query` up to surrounding spaces and case.

    An exact spelling comes first, then the others by id. A whitespace-only query (a search for the space
    token itself) matches only exactly.
    """
    key = normalised(query)
    if not key:
        return [(i, s) for i, s in enumerate(vocab) if s == query][:MAX_MATCHES]
    found = [(i, s) for i, s in enumerate(vocab) if s and normalised(s) == key]
    found.sort(key=lambda pair: (pair[1] != query, pair[0]))
    return found[:MAX_MATCHES]


def phrase_latents(
    acts: Any, max_activation: Float[Tensor, " d_sae"] | None = None, *, top_n: int = 20
) -> list[dict[str, Any]]:
    """Latents active on an encoded phrase (`encode_text(..., top_m=d_sae)`), most specific first.

    Each row: latent, activation (its peak on the phrase), token (where it peaks), and `relative`: the
    peak divided by the latent's max activation over the indexed text (`max_activation`; rows are ranked
    by it when given, by raw activation otherwise). Special positions (BOS) never count.
    """
    if not acts.latents:
        return []
    values = acts.values.clone()
    values[acts.special] = 0.0
    peak, where = values.max(0)
    ids = torch.tensor(acts.latents, dtype=torch.long)
    if max_activation is not None:
        scale = max_activation[ids].float()
        relative = torch.where(scale > 0, peak / scale.clamp(min=1e-12), torch.full_like(peak, float("inf")))
    else:
        relative = torch.full_like(peak, float("nan"))
    key = relative if max_activation is not None else peak
    order = torch.argsort(key.nan_to_num(0.0), descending=True, stable=True)[:top_n]
    return [
        {
            "latent": int(ids[j]),
            "activation": float(peak[j]),
            "relative": float(relative[j]),
            "token": acts.tokens[int(where[j])],
        }
        for j in order.tolist()
        if peak[j] > 0
    ]
