"""Gradient SAE (g-SAE, Olmo et al. 2025; algorithms.md §5): TopK whose *selection* weighs each latent by
how strongly the LM loss reacts along its decoder direction.

With g = ∂L/∂x (the batch's `grads`, in the SAE's normalised space: the trainer divides raw gradients by
`act_scale`), the score is s = h ⊙ (1 + β·|g W_decᵀ|); the k best scores pick the latents, and the code
keeps ReLU(h) there (not the score), so decoding, the sparse encoder gradient and AuxK are exactly TopK's.
Modes: training always scores with g (a batch without g is an error); at inference `select_mode` "grad"
uses g when the batch has it and "plain" is ordinary TopK; β = 0 is TopK everywhere and skips the extra
GEMM, which otherwise runs in bf16 where that is native (`score_dtype`). `WithGradients` feeds
precomputed gradients to an SAE's encode calls, for evaluation in grad mode.

    sae = Sae(d_in, SaeConfig.make("gsae", k=32, grad_beta=1.0))
    code = sae.encode(x_raw, Batch(x_raw, grads=g_raw), training=False)   # grad-mode selection
    code = sae.encode(x_raw, training=False)                           # plain TopK (no labels needed)
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from saekit.errors import ConfigError, DataError
from saekit.sae.activations import Activation
from saekit.sae.config import TopKParams
from saekit.sae.method import Method, register_method
from saekit.sae.methods.topk import check_k, per_row_topk
from saekit.sae.objective import ReconstructionAuxK
from saekit.sae.precision import native_bf16_gemm
from saekit.types import Batch, SparseCode

if TYPE_CHECKING:
    from saekit.sae.model import Sae

logger = logging.getLogger(__name__)

SELECT_MODES = ("grad", "plain")


@torch.no_grad()
def gradient_scores(
    h: Float[Tensor, "batch d_sae"],
    grads: Float[Tensor, "batch d_in"],
    W_dec: Float[Tensor, "d_sae d_in"],
    beta: float,
    dtype: torch.dtype = torch.float32,
) -> Float[Tensor, "batch d_sae"]:
    """s = h ⊙ (1 + β·|g W_decᵀ|) in h's dtype, with the GEMM g W_decᵀ run in `dtype` (e.g. bf16).

    |⟨g, d_i⟩| is the first-order change of the loss along latent i's unit direction, so h_i·|⟨g, d_i⟩|
    is its attribution-patching estimate (algorithms.md §5.2). The GEMM is as large as the encoder's and
    is the whole extra cost of g-SAE over TopK; in bf16 each ⟨g, d_i⟩ is off by up to about 2^-8·‖g‖,
    which can only reorder latents whose scores agree to that precision.
    """
    if dtype.itemsize >= h.dtype.itemsize:  # full precision: the GEMM output is the score buffer
        score = torch.mm(grads.to(h.dtype), W_dec.to(h.dtype).t())
    else:
        score = torch.empty_like(h)
        score.copy_(torch.mm(grads.to(dtype), W_dec.to(dtype).t()))
    return score.abs_().mul_(beta).add_(1.0).mul_(h)


def default_score_dtype(device: torch.device) -> torch.dtype:
    """bf16 where its GEMM is native (`saekit.sae.precision.native_bf16_gemm`), else fp32.

    Measured at d_in=768, d_sae=16384, k=32, B=4096 on 2 AVX512-BF16 cores: the score GEMM in fp32 made
    a g-SAE step 1.64x a TopK step, in bf16 1.11x (goal: <= 1.3x).
    """
    return torch.bfloat16 if native_bf16_gemm(device) else torch.float32


@dataclass(frozen=True)
class GsaeParams(TopKParams):
    grad_beta: float = 1.0
    """Selection score h * (1 + beta * |g W_dec^T|); 0 is plain TopK (the paper's value is unverified)."""
    grad_select: Literal["grad", "plain"] = "grad"
    """Inference selection mode when gradients are available (plain ignores them)."""


class GradientTopK(Activation):
    """TopK on the gradient-weighted score; values are ReLU(h) at the chosen latents (algorithms.md §5)."""

    def __init__(self, params: GsaeParams) -> None:
        super().__init__(params)
        self.k = params.k
        self.beta = float(params.grad_beta)
        self.select_mode = params.grad_select
        """Inference mode ("grad" | "plain"); a public attribute so eval can switch it per run."""
        self.score_dtype: torch.dtype | None = None
        """dtype of the score GEMM; None picks `default_score_dtype` for the device (set fp32 for exact
        selection, e.g. to compare with a dense reference)."""

    def check_width(self, d_sae: int) -> None:
        check_k(self.k, d_sae)

    def select(
        self, h: Float[Tensor, "batch d_sae"], *, sae: Sae, batch: Batch | None, training: bool
    ) -> SparseCode:
        check_k(self.k, h.shape[1])
        if self.select_mode not in SELECT_MODES:
            raise ConfigError(f"g-SAE select_mode must be one of {SELECT_MODES}, got {self.select_mode!r}")
        grads = batch.grads if batch is not None else None
        use_grads = self.beta != 0.0 and (training or self.select_mode == "grad")
        if use_grads and grads is None:
            if training:
                raise DataError(
                    "g-SAE training needs dL/dx for every row but the batch has no gradients; collect the "
                    "cache with capture_grads=true (or set sae.grad_beta=0 for plain TopK)"
                )
            use_grads = False  # inference without labels: plain TopK (algorithms.md §5.5)
        if not use_grads:
            return per_row_topk(h, self.k)
        if grads.shape != (h.shape[0], sae.d_in):
            raise DataError(f"batch.grads has shape {tuple(grads.shape)}, expected {(h.shape[0], sae.d_in)}")
        dtype = self.score_dtype or _logged_default_dtype(h.device)
        score = gradient_scores(h, grads, sae.W_dec, self.beta, dtype)
        indices = torch.topk(score, self.k, dim=1, sorted=False).indices
        del score
        # The code keeps h (ReLU'd later), not the score: the score only decides which latents survive.
        return SparseCode.from_topk(h.gather(1, indices), indices, h.shape[1])

    def folded_params(self, scale: float) -> GsaeParams:
        """The score h·(1 + β|g W_decᵀ|) uses g in the scaled space (g/c): β/c keeps the ranking for raw g."""
        return dataclasses.replace(self.params, grad_beta=self.params.grad_beta / scale)


_LOGGED_DTYPES: dict[str, torch.dtype] = {}


def _logged_default_dtype(device: torch.device) -> torch.dtype:
    if device.type not in _LOGGED_DTYPES:
        _LOGGED_DTYPES[device.type] = default_score_dtype(device)
        logger.info(
            "g-SAE score GEMM on %s runs in %s (set sae.activation.score_dtype to override)",
            device.type,
            _LOGGED_DTYPES[device.type],
        )
    return _LOGGED_DTYPES[device.type]


class WithGradients:
    """An SAE whose successive encode calls consume successive (acts, grads) chunks, in raw units.

    Evaluation code calls `encode`/`reconstruct` with raw-activation chunks in a known order (cached rows,
    or one spliced forward per token batch); this wrapper hands the matching raw gradients to the g-SAE
    selection, in "grad" mode, and checks that each chunk's rows are the activations the gradients belong
    to, so a misaligned feed fails loudly instead of scoring with someone else's gradient. Every other
    attribute is the wrapped SAE's.

        fed = WithGradients(sae, zip(act_chunks, grad_chunks))
        x_hat = fed.reconstruct(act_chunks[0])       # selection used grad_chunks[0]
    """

    def __init__(self, sae: Sae, chunks: Iterable[tuple[Tensor, Tensor]], *, atol: float = 1e-4) -> None:
        self.sae = sae
        self._chunks: Iterator[tuple[Tensor, Tensor]] = iter(chunks)
        self.atol = atol
        self.consumed = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sae, name)

    def _next_grads(self, x_raw: Tensor) -> Tensor:
        try:
            acts, grads = next(self._chunks)
        except StopIteration:
            raise DataError(
                "WithGradients ran out of gradient chunks; feed one chunk per encode call"
            ) from None
        acts, grads = acts.to(x_raw.device, torch.float32), grads.to(x_raw.device, torch.float32)
        if acts.shape != x_raw.shape or grads.shape != x_raw.shape:
            raise DataError(f"gradient chunk {tuple(grads.shape)} does not match rows {tuple(x_raw.shape)}")
        scale = acts.abs().amax().clamp_min(1.0)
        if not torch.allclose(x_raw.float(), acts, rtol=1e-4, atol=self.atol * float(scale)):
            raise DataError(
                "activations and gradients are misaligned: the rows being encoded are not the "
                "ones the gradients were captured for"
            )
        self.consumed += x_raw.shape[0]
        return grads

    def encode(
        self, x_raw: Tensor, batch: Batch | None = None, *, training: bool | None = None
    ) -> SparseCode:
        """Encode raw `x_raw` (as Sae.encode, which scales the raw gradients too) with the next chunk's
        gradients, in grad mode."""
        grads = self._next_grads(x_raw)
        activation = self.sae.activation
        previous = getattr(activation, "select_mode", None)
        activation.select_mode = "grad"
        try:
            train = False if training is None else training
            return self.sae.encode(x_raw, Batch(x_raw, grads=grads), training=train)
        finally:
            activation.select_mode = previous

    def reconstruct(self, x_raw: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_in"]:
        """As Sae.reconstruct, with grad-mode selection."""
        x_hat = self.sae.decode(self.encode(x_raw))
        if self.sae.act_scale != 1.0:
            x_hat = x_hat / self.sae.act_scale
        return x_hat.to(x_raw.dtype)


GSAE = register_method(
    Method(
        name="gsae",
        params=GsaeParams,
        activation=GradientTopK,
        objective=ReconstructionAuxK,
        summary="g-SAE (Olmo et al. 2025): TopK whose selection weighs latents by |dL/dx · d_i|",
        selection_modes=SELECT_MODES[:1],
        needs_grads=True,
    )
)
