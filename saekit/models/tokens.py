"""Tokenizer access for loaded models: the tokenizer itself, its BOS id, and a mask of special positions.

tok = tokenizer_of(model)
mask = special_token_mask(tokens, model)   # True at BOS/EOS/PAD: excluded from caches and metrics
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from saekit.errors import ModelLoadError


def tokenizer_of(model: Any) -> Any:
    """The model's Hugging Face tokenizer."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ModelLoadError(
            "this model has no tokenizer; load it with saekit.models.load_model or pass a "
            "checkpoint directory that contains tokenizer files"
        )
    return tokenizer


def bos_token_id(model: Any) -> int:
    """BOS id; tokenizers without one (GPT-2 style) use their end-of-text token, as TransformerLens does."""
    tokenizer = tokenizer_of(model)
    for candidate in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    raise ModelLoadError(
        "the tokenizer has neither a BOS nor an EOS token, so sequences cannot start with "
        "BOS; use a tokenizer that defines bos_token"
    )


def special_token_ids(model: Any) -> list[int]:
    """Sorted ids of the tokenizer's special tokens (BOS, EOS, PAD and any other declared special token)."""
    tokenizer = tokenizer_of(model)
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids.update(
        i for i in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None
    )
    ids.add(bos_token_id(model))
    return sorted(int(i) for i in ids)


def special_token_mask(tokens: Int[Tensor, "batch seq"], model: Any) -> Bool[Tensor, "batch seq"]:
    """True where `tokens` holds a special token (BOS/EOS/PAD...), whose activations are outliers."""
    specials = torch.tensor(special_token_ids(model), dtype=tokens.dtype, device=tokens.device)
    return torch.isin(tokens, specials)
