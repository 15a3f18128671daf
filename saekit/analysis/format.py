"""The on-disk layout of a latent index (`<run>/index/`) and small helpers shared by builder and reader.

An index directory holds three files, written together into a temporary sibling directory and renamed
into place, so a reader never sees a half-built index:

- `index.json`: format version, settings, model id, hook point, d_sae, token counts, build timing;
- `stats.safetensors`: dense per-latent arrays ([d_sae] or [d_sae, small]) read eagerly by the reader;
- `examples.safetensors`: [d_sae, n_examples, window] token ids (int32, −1 = padding) and activations
  (float16), plus the held-out token sequences; read lazily, one latent at a time, through `safe_open`;
- `vocab.json`: the decoded string of every token id, so the index renders without loading a tokenizer.

    with staged_directory(index_dir) as tmp: save_file(stats, tmp / STATS_FILE); ...   # saekit.io
    prompt_tokens(model, "From my experience,")      # Long[1, T], BOS first
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from saekit import rundir
from saekit.errors import ConfigError

logger = logging.getLogger(__name__)

INDEX_FORMAT_VERSION = 1
INDEX_DIR = rundir.INDEX_DIR
META_FILE = "index.json"
STATS_FILE = "stats.safetensors"
EXAMPLES_FILE = "examples.safetensors"
VOCAB_FILE = "vocab.json"

QUANTILE_LEVELS = (0.1, 0.25, 0.5, 0.75, 0.9, 0.99)
"""Levels of the stored per-latent activation quantiles (over non-zero activations)."""
HISTOGRAM_BINS = 32
"""Equal-width bins over [0, max activation] of each latent's stored histogram."""
FINE_BINS = 256
"""Bins of the streaming histogram the stored quantiles and histogram are derived from."""
NEUTRAL_PROMPTS = ("From my experience,",)
"""Arad et al. (algorithms.md §9.2) score output effects on this prompt."""


def prompt_tokens(model: Any, prompt: str) -> Int[Tensor, "1 seq"]:
    """Token ids of `prompt` with the model's BOS first, the way `chunk_tokens` builds training sequences."""
    from saekit.models import bos_token_id, tokenizer_of

    ids = tokenizer_of(model)(prompt, add_special_tokens=False)["input_ids"]
    return torch.tensor([[bos_token_id(model), *ids]], dtype=torch.long)


def token_id_of(model: Any, token: str) -> int:
    """The id of a single-token string (e.g. " Paris"); the first piece's id when it splits, with a note."""
    from saekit.models import tokenizer_of

    ids = tokenizer_of(model)(token, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ConfigError(f"target token {token!r} tokenizes to nothing; pass a non-empty string")
    if len(ids) > 1:
        logger.warning("%r is %d tokens; using the first one", token, len(ids))
    return int(ids[0])


def decoded_vocab(tokenizer: Any, vocab_size: int) -> list[str]:
    """The display string of every token id (single-token decode; ids beyond the tokenizer give '')."""
    n_tok = len(tokenizer)
    strings = tokenizer.batch_decode([[i] for i in range(min(n_tok, vocab_size))])
    return strings + [""] * max(0, vocab_size - n_tok)
