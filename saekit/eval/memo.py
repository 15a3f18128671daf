"""Memo of the model forwards that do not depend on the SAE being evaluated.

Evaluating many SAEs at one hook point on the same held-out text (a study, a comparison) repeats work that
is identical for every SAE: of the four forwards per batch of the spliced-loss evaluation only the spliced
one depends on the SAE (clean, zero- and mean-ablation do not), and the held-out activation rows used for
threshold calibration and the extra metrics are the same for every run. `ForwardMemo` keeps them for one
model, keyed by hook point and a fingerprint of the token batch (and of the mean vector for the ablation),
so a study pays them once. Stored tensors are bounded by `max_bytes`; beyond it, results are recomputed.

    memo = ForwardMemo(model)
    for run in runs:
        evaluate_run(run, cfg, memo=memo)     # the second run reuses the clean/ablation forwards
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from saekit.eval.text_rows import activation_rows

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 3 << 30
"""Enough for the clean log-probs of 32 sequences of 128 tokens over a 49k vocabulary (0.8 GiB) plus the
calibration rows; bigger evaluations recompute what does not fit."""


def fingerprint(*tensors: Tensor) -> str:
    """A digest of the tensors' shapes, dtypes and bytes (equal content, equal key)."""
    digest = hashlib.sha1()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        digest.update(f"{tuple(t.shape)}{t.dtype}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


class ForwardMemo:
    """SAE-independent forwards of one model, reused across evaluations (see the module docstring).
    `model` may be None until `evaluate_run` loads one (it then adopts it)."""

    def __init__(self, model: Any = None, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.model = model
        self.max_bytes = max_bytes
        self.stored_bytes = 0
        self.hits = 0
        self._items: dict[tuple[str, ...], Any] = {}

    def get_or_compute(
        self, key: tuple[str, ...], compute: Callable[[], Any], size: Callable[[Any], int]
    ) -> Any:
        """The value stored under `key`, else `compute()` (kept if `size(value)` still fits the budget)."""
        if key in self._items:
            self.hits += 1
            return self._items[key]
        value = compute()
        nbytes = size(value)
        if self.stored_bytes + nbytes <= self.max_bytes:
            self._items[key] = value
            self.stored_bytes += nbytes
        else:
            logger.debug(
                "forward memo full (%d of %d bytes): not keeping %s",
                self.stored_bytes,
                self.max_bytes,
                key[0],
            )
        return value

    def activation_rows(self, tokens: Tensor, hookpoint: str, *, batch_size: int) -> Iterator[Tensor]:
        """As `text_rows.activation_rows` (one fp32 chunk per batch), computed once per (tokens, hook)."""
        key = ("rows", hookpoint, str(batch_size), fingerprint(tokens))

        def compute() -> list[Tensor]:
            return list(activation_rows(self.model, tokens, hookpoint, batch_size=batch_size))

        chunks = self.get_or_compute(key, compute, lambda cs: sum(c.numel() * c.element_size() for c in cs))
        return iter(chunks)


def rows_source(
    model: Any, memo: ForwardMemo | None, tokens: Tensor, hookpoint: str, *, batch_size: int
) -> Iterator[Tensor]:
    """Activation row chunks of `tokens`, through the memo when there is one."""
    if memo is None:
        return activation_rows(model, tokens, hookpoint, batch_size=batch_size)
    return memo.activation_rows(tokens, hookpoint, batch_size=batch_size)
