"""TopK SAE (Gao et al. 2024, algorithms.md §1): keep the k largest pre-activations of every row, train
FVU + AuxK. The same rule in training and inference.

    sae = Sae(d_in, SaeConfig.make("topk", k=32))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jaxtyping import Float
from torch import Tensor

from saekit.errors import ConfigError
from saekit.sae.activations import Activation
from saekit.sae.config import TopKParams
from saekit.sae.fused_select import Selected, fused_topk_select
from saekit.sae.method import Method, register_method
from saekit.sae.objective import ReconstructionAuxK
from saekit.sae.row_topk import row_topk
from saekit.types import Batch, SparseCode

if TYPE_CHECKING:
    from saekit.sae.model import Sae


def check_k(k: int, d_sae: int) -> None:
    if k > d_sae:
        raise ConfigError(f"sae.k={k} exceeds d_sae={d_sae}; lower k or raise expansion_factor")


def per_row_topk(h: Float[Tensor, "batch d_sae"], k: int) -> SparseCode:
    """The k largest entries of every row (unsorted inside a row: the decoder does not care)."""
    values, indices = row_topk(h, k)
    return SparseCode.from_topk(values, indices, h.shape[1])


class TopK(Activation):
    """Keep the k largest pre-activations of every row; same rule in training and eval."""

    def __init__(self, params: TopKParams) -> None:
        super().__init__(params)
        self.k = params.k

    def check_width(self, d_sae: int) -> None:
        check_k(self.k, d_sae)

    def select(
        self, h: Float[Tensor, "batch d_sae"], *, sae: Sae, batch: Batch | None, training: bool
    ) -> SparseCode:
        check_k(self.k, h.shape[1])
        return per_row_topk(h, self.k)

    def select_fused(
        self, sae: Sae, x: Tensor, *, batch: Batch | None, training: bool, aux_columns: Tensor | None
    ) -> Selected | None:
        if type(self).select is not TopK.select:  # a subclass with its own rule keeps the dense path
            return None
        check_k(self.k, sae.d_sae)
        return fused_topk_select(sae, x, self.k, aux_columns)


TOPK = register_method(
    Method(
        name="topk",
        params=TopKParams,
        activation=TopK,
        objective=ReconstructionAuxK,
        summary="TopK + AuxK (Gao et al. 2024): exactly k latents per token",
    )
)
