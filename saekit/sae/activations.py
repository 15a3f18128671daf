"""Activation strategies: how an SAE turns dense pre-activations into a sparse code, looked up by name.

An activation's `select(h, sae=, batch=, training=)` picks entries of h = (x − b_dec) W_enc + b_enc (given
without grad) and returns them grouped by row (`Selection`, CSR). The shared `encode` template does the
dense GEMM, calls `select`, frees h, then attaches the selected entries to autograd through
`saekit.kernels.encode_selected` and applies ReLU. Batch-coupled methods (BatchTopK, Feature-Choice) make
`select` differ between training and inference; g-SAE reads `batch.grads` in `select`; a method with a
non-linear encoder (matching pursuit) overrides `encode` itself. None of them touch the `Sae` class.

    @register_activation("my_topk")
    class MyTopK(Activation): ...
    act = get_activation("topk", SaeConfig(k=32))
"""

from __future__ import annotations

import difflib
import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from jaxtyping import Float, Int
from torch import Tensor

from saekit.config import SaeConfig
from saekit.errors import ConfigError
from saekit.kernels import encode_selected
from saekit.sae.row_topk import row_topk
from saekit.types import Batch, SparseCode

if TYPE_CHECKING:
    from saekit.sae.model import Sae

logger = logging.getLogger(__name__)

ACTIVATIONS: dict[str, type[Activation]] = {}


@dataclass
class Selection:
    """Selected entries of h, grouped by row: row b owns entries offsets[b]:offsets[b+1]."""

    indices: Int[Tensor, " nnz"]
    pre_acts: Float[Tensor, " nnz"]
    """h at the selected entries (no grad yet)."""
    offsets: Int[Tensor, " batch_plus_1"]
    rows: Int[Tensor, " nnz"]

    @classmethod
    def from_topk(cls, values: Float[Tensor, "batch k"], indices: Int[Tensor, "batch k"]) -> Selection:
        """Fixed number of entries per row."""
        batch, k = indices.shape
        device = indices.device
        offsets = torch.arange(0, (batch + 1) * k, k, device=device, dtype=torch.long)
        rows = torch.arange(batch, device=device).repeat_interleave(k)
        return cls(indices.reshape(-1).long(), values.reshape(-1), offsets, rows)

    @classmethod
    def from_entries(
        cls,
        rows: Int[Tensor, " nnz"],
        indices: Int[Tensor, " nnz"],
        pre_acts: Float[Tensor, " nnz"],
        batch: int,
    ) -> Selection:
        """From (row, latent, h) triples in any order, e.g. a top-(B·k) over the flattened batch."""
        order = torch.argsort(rows, stable=True)
        offsets = torch.zeros(batch + 1, dtype=torch.long, device=rows.device)
        offsets[1:] = torch.cumsum(torch.bincount(rows, minlength=batch), 0)
        return cls(indices[order].long(), pre_acts[order], offsets, rows[order].long())


@dataclass
class Encoded:
    """What `Activation.encode` hands back to the Sae."""

    code: SparseCode
    pre_acts: Float[Tensor, "batch d_sae"] | None = None
    """Dense h, only when asked for (tests, analysis); otherwise freed right after selection."""
    aux_pre_acts: Float[Tensor, "batch n_aux"] | None = None
    """h[:, aux_columns] (no grad) — all AuxK needs, so the full h need not stay alive."""


class Activation:
    """Base strategy. Subclasses implement `select`; most keep the default `encode`."""

    name: ClassVar[str] = ""
    uses_threshold: ClassVar[bool] = False
    """True when the Sae should carry a per-latent `threshold` buffer (saved with the weights)."""

    def __init__(self, cfg: SaeConfig) -> None:
        self.cfg = cfg

    def select(
        self, h: Float[Tensor, "batch d_sae"], *, sae: Sae, batch: Batch | None, training: bool
    ) -> Selection:
        raise NotImplementedError

    def encode(
        self,
        sae: Sae,
        x: Float[Tensor, "batch d_in"],
        *,
        batch: Batch | None,
        training: bool,
        aux_columns: Int[Tensor, " n_aux"] | None = None,
        keep_pre_acts: bool = False,
    ) -> Encoded:
        """Dense GEMM under no_grad → select → slice AuxK columns → free h → sparse-grad ReLU code."""
        x = x.to(sae.W_enc.dtype)
        with torch.no_grad():
            # Training steps reuse one h buffer (see Sae.dense_pre_acts); a kept h must be its own tensor.
            h = sae.dense_pre_acts(x, reuse_buffer=sae.training and not keep_pre_acts)
            sel = self.select(h, sae=sae, batch=batch, training=training)
            aux = h.index_select(1, aux_columns) if aux_columns is not None else None
            dense = h if keep_pre_acts else None
            del h  # a fresh h (eval, GPU) is the step's biggest buffer: free it before backward
        return encode_selection(sae, x, sel, pre_acts=dense, aux_pre_acts=aux)

    def params(self) -> dict[str, Any]:
        """Parameters worth logging next to the name (the full SaeConfig is saved anyway)."""
        return {}


def encode_selection(
    sae: Sae,
    x: Float[Tensor, "batch d_in"],
    sel: Selection,
    *,
    pre_acts: Float[Tensor, "batch d_sae"] | None = None,
    aux_pre_acts: Float[Tensor, "batch n_aux"] | None = None,
) -> Encoded:
    """The tail every selecting `encode` shares: recompute the selected pre-activations under autograd
    (`encode_selected`, so gradients reach only those W_enc columns), ReLU them into a CSR code, and wrap
    it with the optional dense h and AuxK columns that were sliced before h was freed."""
    pre = encode_selected(x, sae.W_enc, sae.b_enc, sae.b_dec, sel.rows, sel.indices, sel.pre_acts)
    # ReLU after selection (Gao et al. §1.2 step 4): a row may keep fewer than k non-zeros.
    code = SparseCode(torch.relu(pre), sel.indices, sel.offsets, sae.d_sae)
    return Encoded(code, pre_acts, aux_pre_acts)


def register_activation(name: str) -> Callable[[type[Activation]], type[Activation]]:
    """Class decorator adding an activation to the registry under `name`."""

    def add(cls: type[Activation]) -> type[Activation]:
        if name in ACTIVATIONS and ACTIVATIONS[name] is not cls:
            raise ValueError(f"activation {name!r} is already registered by {ACTIVATIONS[name].__name__}")
        cls.name = name
        ACTIVATIONS[name] = cls
        return cls

    return add


def load_method_modules() -> None:
    """Import `saekit.sae.methods`, which imports every module that registers an activation or objective.

    Done lazily (on the first unknown name, or by code that lists the registries) rather than from
    `saekit/sae/__init__.py`: method modules import `saekit.train.objectives`, which imports `saekit.sae`,
    so an eager import there would be circular whenever `saekit.train` is imported first.
    """
    importlib.import_module("saekit.sae.methods")


def get_activation(name: str, cfg: SaeConfig) -> Activation:
    """Instantiate the registered activation `name`; unknown names raise ConfigError with close matches."""
    if name not in ACTIVATIONS:
        load_method_modules()
    if name not in ACTIVATIONS:
        close = difflib.get_close_matches(name, ACTIVATIONS, n=3)
        hint = (
            f"did you mean {', '.join(map(repr, close))}?" if close else f"choose from {sorted(ACTIVATIONS)}"
        )
        raise ConfigError(f"sae.activation: unknown activation {name!r}; {hint}")
    return ACTIVATIONS[name](cfg)


@register_activation("topk")
class TopK(Activation):
    """Keep the k largest pre-activations of every row (Gao et al. 2024); same rule in training and eval."""

    def __init__(self, cfg: SaeConfig) -> None:
        super().__init__(cfg)
        self.k = cfg.k

    def select(
        self, h: Float[Tensor, "batch d_sae"], *, sae: Sae, batch: Batch | None, training: bool
    ) -> Selection:
        if self.k > h.shape[1]:
            raise ConfigError(f"sae.k={self.k} exceeds d_sae={h.shape[1]}; lower k or widen the SAE")
        # sorted=False: order inside a row is irrelevant to the decoder and sorting costs time.
        values, indices = row_topk(h, self.k)
        return Selection.from_topk(values, indices)

    def params(self) -> dict[str, Any]:
        return {"k": self.k}
