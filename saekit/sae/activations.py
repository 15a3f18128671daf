"""Activations: how an SAE turns dense pre-activations into a sparse code (the encode rule of a method).

An activation's `select(h, sae=, batch=, training=)` picks entries of h = (x − b_dec) W_enc + b_enc (given
without grad) and returns them grouped by row as a `SparseCode` whose values are the pre-activations. The
shared `encode` template does the dense GEMM, calls `select`, frees h, then attaches the selected entries
to autograd through `saekit.kernels.encode_selected` and applies `values` (ReLU by default). Batch-coupled
methods make `select` differ between training and inference; g-SAE reads `batch.grads`; a method with a
non-linear encoder (matching pursuit) overrides `encode` itself. None of them touch the `Sae` class.

Activations are built by their method's declaration (`saekit.sae.method`) from the method's section:

    class MyTopK(Activation):
        def select(self, h, *, sae, batch, training): ...
    act = MyTopK(params)
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from saekit.kernels import encode_selected
from saekit.types import Batch, SparseCode

if TYPE_CHECKING:
    from saekit.sae.model import Sae

logger = logging.getLogger(__name__)


@dataclass
class Encoded:
    """What `Activation.encode` hands back to the Sae."""

    code: SparseCode
    pre_acts: Float[Tensor, "batch d_sae"] | None = None
    """Dense h, only when asked for (tests, analysis); otherwise freed right after selection."""
    aux_pre_acts: Float[Tensor, "batch n_aux"] | None = None
    """h[:, aux_columns] (no grad) — all AuxK needs, so the full h need not stay alive."""
    selected_pre: Float[Tensor, " nnz"] | None = None
    """h at the code's entries (no grad), e.g. for JumpReLU's L0 estimator; None where there is no h."""


class Activation:
    """Base strategy. Subclasses implement `select`; most keep the default `encode`."""

    threshold: ClassVar[Literal["buffer", "parameter"] | None] = None
    """Whether the Sae carries a per-latent `threshold` (saved with the weights): a learned-by-EMA
    buffer (BatchTopK, Feature Choice) or a trained parameter (JumpReLU)."""

    def __init__(self, params: Any) -> None:
        self.params = params

    def check_width(self, d_sae: int) -> None:
        """Raise ConfigError when the method's settings cannot work with this many latents."""

    def select(
        self, h: Float[Tensor, "batch d_sae"], *, sae: Sae, batch: Batch | None, training: bool
    ) -> SparseCode:
        raise NotImplementedError

    def select_fused(
        self,
        sae: Sae,
        x: Float[Tensor, "batch d_in"],
        *,
        batch: Batch | None,
        training: bool,
        aux_columns: Int[Tensor, " n_aux"] | None,
    ) -> tuple[SparseCode, Float[Tensor, "batch n_aux"] | None] | None:
        """The same selection as `select`, with h[:, aux_columns], computed by the fused encoder GEMM
        (`saekit.sae.fused_select`) without a dense h; None (the default) runs the dense path."""
        return None

    def values(self, pre: Float[Tensor, " nnz"], code: SparseCode, sae: Sae) -> Float[Tensor, " nnz"]:
        """Code values from the selected pre-activations (under autograd): ReLU after selection (Gao et
        al. §1.2 step 4), so a row may keep fewer non-zeros than it selected."""
        return torch.relu(pre)

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
        """Dense GEMM under no_grad → select → slice AuxK columns → free h → sparse-grad code (or the fused
        GEMM+selection of `select_fused`, which never builds h)."""
        x = x.to(sae.W_enc.dtype)
        if not keep_pre_acts:
            fused = self.select_fused(sae, x, batch=batch, training=training, aux_columns=aux_columns)
            if fused is not None:
                return self.encode_selection(sae, x, fused[0], aux_pre_acts=fused[1])
        with torch.no_grad():
            # Training steps reuse one h buffer (see Sae.dense_pre_acts); a kept h must be its own tensor.
            h = sae.dense_pre_acts(x, reuse_buffer=sae.training and not keep_pre_acts)
            sel = self.select(h, sae=sae, batch=batch, training=training)
            aux = h.index_select(1, aux_columns) if aux_columns is not None else None
            dense = h if keep_pre_acts else None
            del h  # a fresh h (eval, GPU) is the step's biggest buffer: free it before backward
        return self.encode_selection(sae, x, sel, pre_acts=dense, aux_pre_acts=aux)

    def encode_selection(
        self,
        sae: Sae,
        x: Float[Tensor, "batch d_in"],
        sel: SparseCode,
        *,
        pre_acts: Float[Tensor, "batch d_sae"] | None = None,
        aux_pre_acts: Float[Tensor, "batch n_aux"] | None = None,
    ) -> Encoded:
        """The tail every selecting `encode` shares: recompute the selected pre-activations under autograd
        (`encode_selected`, so gradients reach only those W_enc columns), turn them into code values, and
        wrap them with the optional dense h and AuxK columns that were sliced before h was freed."""
        pre = encode_selected(x, sae.W_enc, sae.b_enc, sae.b_dec, sel.row_ids(), sel.indices, sel.values)
        return Encoded(sel.with_values(self.values(pre, sel, sae)), pre_acts, aux_pre_acts, sel.values)

    def folded_params(self, scale: float) -> Any:
        """The method section to use once inputs are no longer multiplied by `scale` (`fold_act_scale`);
        rules invariant to a positive input scale keep theirs."""
        return self.params

    def init_from_data_(self, sae: Sae, x: Float[Tensor, "n d_in"]) -> None:
        """Method-specific initialisation from a normalised data sample (after the shared one)."""

    def lr_scales(self) -> dict[str, float]:
        """Learning-rate multipliers for some of the SAE's parameters, by name (the optimiser puts each in
        its own group); empty: one learning rate for all."""
        return {}

    def permute_latents_(self, perm: Int[Tensor, " d_sae"]) -> None:
        """Reorder any per-latent state the activation keeps itself (the Sae's tensors move elsewhere)."""

    def params_summary(self) -> dict[str, Any]:
        """The method's keys, for logs."""
        return dataclasses.asdict(self.params)
