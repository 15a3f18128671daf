"""The one SAE module: fp32 parameters in SAELens orientation, a pluggable activation, sparse decode.

`encode` and `reconstruct` take raw activations (multiplied by `act_scale` inside, see `scale_input`);
`encode_normalized`, `decode` and `forward` work in the SAE's normalised space (the trainer's side). The
encoder gradient and the decoder go only through `saekit.kernels` (`encode_selected`, `sparse_decode`), so
no dense [B, d_sae] gradient or code is ever built.

    sae = Sae(d_in=576, cfg=SaeConfig.make("topk", k=32, expansion_factor=8))
    out = sae(sae.scale_input(x_raw))            # SaeOutput(x_hat, code, pre_acts, aux_pre_acts)
    code = sae.encode(x_raw)                     # raw in, like reconstruct
    x_hat_raw = sae.reconstruct(x_raw)           # eval / splicing
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from saekit.errors import ConfigError, DataError
from saekit.kernels import sparse_decode
from saekit.sae.activations import Activation
from saekit.sae.config import SaeConfig
from saekit.sae.constraint import normalize_rows_, project_out_parallel_
from saekit.sae.init import init_weights_tied_
from saekit.sae.method import get_method
from saekit.sae.precision import encoder_gemm_dtype
from saekit.types import Batch, SparseCode

logger = logging.getLogger(__name__)


@dataclass
class SaeOutput:
    x_hat: Float[Tensor, "batch d_in"]
    code: SparseCode
    pre_acts: Float[Tensor, "batch d_sae"] | None = None
    """Dense pre-activations, only with keep_pre_acts=True."""
    aux_pre_acts: Float[Tensor, "batch n_aux"] | None = None
    """h[:, aux_columns] (no grad), only when aux_columns was given (AuxK)."""
    selected_pre: Float[Tensor, " nnz"] | None = None
    """h at the code's entries (no grad), where the activation has an h."""


class Sae(nn.Module):
    """Sparse autoencoder x̂ = Σ_i z_i W_dec[i] + b_dec with z = activation((x − b_dec) W_enc + b_enc).

    Layout: every parameter is contiguous. The encoder is stored latent-major as `W_enc_T` [d_sae, d_in]
    (row i is latent i's encoder direction) and `W_enc` is its [d_in, d_sae] transpose view, so reading
    code and the checkpoint format keep SAELens orientation. Latent-major storage is the layout the sparse
    encoder backward produces its gradient in: autograd then takes that gradient as is, where a
    [d_in, d_sae] parameter costs a transpose copy of the full gradient every step (38 ms, 0.06 of an
    encoder GEMM at d_in=768, d_sae=16384, B=4096 on 2 cores, plus a transient weight-sized buffer).
    The forward GEMM is equally fast with either operand layout. (A *strided* parameter, i.e. the
    transpose view itself registered as the parameter, was rejected: CPU fused Adam copies strided
    tensors and mis-updates one whose moments come back contiguous from a checkpoint, torch 2.13.)
    """

    def __init__(
        self,
        d_in: int,
        cfg: SaeConfig,
        *,
        act_scale: float = 1.0,
        hookpoint: str = "",
        model_id: str = "",
        extra_cfg: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if d_in <= 0:
            raise ConfigError(f"d_in must be a positive activation width, got {d_in}")
        self.d_in = d_in
        self.d_sae = cfg.resolve_d_sae(d_in)
        self.cfg = cfg
        self.activation = make_activation(cfg)
        self.activation.check_width(self.d_sae)
        self.act_scale = float(act_scale)
        self.hookpoint = hookpoint
        self.model_id = model_id
        self.extra_cfg = dict(extra_cfg or {})
        self.W_enc_T = nn.Parameter(torch.empty(self.d_sae, d_in))
        self.b_enc = nn.Parameter(torch.zeros(self.d_sae))
        self.W_dec = nn.Parameter(torch.empty(self.d_sae, d_in))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        if self.activation.threshold == "parameter":  # trained by the optimiser (JumpReLU)
            self.threshold = nn.Parameter(torch.zeros(self.d_sae))
        else:  # learned by an EMA in training mode (BatchTopK, Feature Choice), or absent
            threshold = torch.zeros(self.d_sae) if self.activation.threshold == "buffer" else None
            self.register_buffer("threshold", threshold)
        self._scratch = _PreActScratch()
        self.encoder_gemm_ran: torch.dtype | None = None
        """dtype the last dense encoder GEMM ran in (bf16 only where requested and native)."""
        init_weights_tied_(self)

    @property
    def W_enc(self) -> Float[Tensor, "d_in d_sae"]:
        """The encoder as a [d_in, d_sae] view of `W_enc_T`: differentiable, and writable under no_grad
        (`sae.W_enc.copy_(...)` writes through). Gradients live on `W_enc_T.grad` ([d_sae, d_in])."""
        return self.W_enc_T.t()

    # ------------------------------------------------------------------------------ forward path

    @torch.no_grad()
    def dense_pre_acts(
        self, x: Float[Tensor, "batch d_in"], *, reuse_buffer: bool = False, latent_major: bool = False
    ) -> Float[Tensor, "batch d_sae"] | Float[Tensor, "d_sae batch"]:
        """h = (x − b_dec) W_enc + b_enc, without grad (the one dense GEMM of a step); `latent_major=True`
        returns hᵀ [d_sae, B] directly (contiguous per-latent rows, for per-latent selection).

        `reuse_buffer=True` (training steps) writes h into one scratch tensor kept between calls: a fresh
        [B, d_sae] allocation is page-faulted in on first touch every step on CPU (70 ms of a 0.64 s GEMM at
        B=4096, d_sae=16384, 2 cores). The result is then overwritten by the next such call, so callers
        must not keep it. The scratch is dropped by `.eval()`. CPU only: CUDA's caching allocator already
        recycles blocks, and there a persistent h would only raise the backward's peak memory.
        With `cfg.encoder_bf16` the GEMM runs in bf16 and h still comes back in fp32 (bias added in fp32),
        so every selection rule, AuxK slice and threshold sees the usual dtype. Where bf16 is not native
        (`saekit.sae.precision`) the GEMM stays fp32, with one warning.
        """
        x_centered = x - self.b_dec
        if latent_major:
            lhs, rhs, bias = self.W_enc_T, x_centered.t(), self.b_enc.unsqueeze(1)
        else:
            lhs, rhs, bias = x_centered, self.W_enc, self.b_enc
        shape = (lhs.shape[0], rhs.shape[1])
        reuse = reuse_buffer and x.device.type == "cpu"
        out = self._scratch.get(shape, x.dtype, x.device) if reuse else None
        self.encoder_gemm_ran = encoder_gemm_dtype(self.cfg.encoder_bf16, x.device)
        if self.encoder_gemm_ran != torch.bfloat16:
            return torch.addmm(bias, lhs, rhs, out=out)
        h_low = lhs.to(torch.bfloat16) @ rhs.to(torch.bfloat16)
        out = torch.empty(shape, dtype=x.dtype, device=x.device) if out is None else out
        # Upcast, then add: 23 ms at [4096, 16384] on 2 cores, vs 98 ms for one mixed-dtype add.
        return out.copy_(h_low).add_(bias)

    def train(self, mode: bool = True) -> Sae:
        if not mode:
            self._scratch.release()
        return super().train(mode)

    def scale_input(self, x_raw: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_in"]:
        """Raw activations → the normalised fp32 space the SAE was trained in."""
        x = x_raw.to(self.W_dec.dtype)
        return x * self.act_scale if self.act_scale != 1.0 else x

    def scale_batch(self, batch: Batch) -> Batch:
        """A training batch in the normalised space: acts times act_scale, and gradients divided by it
        (dL/d(c·x) = (dL/dx) / c), both fp32. The one place training inputs are scaled."""
        grads = None if batch.grads is None else batch.grads.float() / self.act_scale
        return Batch(self.scale_input(batch.acts), grads, batch.token_ids)

    def encode(
        self, x_raw: Float[Tensor, "batch d_in"], batch: Batch | None = None, *, training: bool | None = None
    ) -> SparseCode:
        """Sparse code of raw activations (scaled by `act_scale` here, like `reconstruct`); a `batch` with
        gradients carries raw dL/dx. `training` defaults to the module mode."""
        if batch is not None and batch.grads is not None:
            batch = Batch(batch.acts, batch.grads.float() / self.act_scale, batch.token_ids)
        return self.encode_normalized(self.scale_input(x_raw), batch, training=training)

    def encode_normalized(
        self, x: Float[Tensor, "batch d_in"], batch: Batch | None = None, *, training: bool | None = None
    ) -> SparseCode:
        """Sparse code of inputs already in the normalised space (`scale_input`; batch gradients divided by
        act_scale, as `scale_batch` does): the trainer's and objectives' entry point."""
        train = self.training if training is None else training
        return self.activation.encode(self, x, batch=batch, training=train).code

    def decode(self, code: SparseCode) -> Float[Tensor, "batch d_in"]:
        return sparse_decode(code.indices, code.values, code.offsets, self.W_dec, self.b_dec)

    def forward(
        self,
        x: Float[Tensor, "batch d_in"],
        batch: Batch | None = None,
        *,
        aux_columns: Int[Tensor, " n_aux"] | None = None,
        keep_pre_acts: bool = False,
    ) -> SaeOutput:
        """Encode and decode normalised inputs. `aux_columns` (e.g. dead latents) returns h[:, aux_columns]
        so AuxK can select among them after the dense h has been freed."""
        enc = self.activation.encode(
            self, x, batch=batch, training=self.training, aux_columns=aux_columns, keep_pre_acts=keep_pre_acts
        )
        return SaeOutput(self.decode(enc.code), enc.code, enc.pre_acts, enc.aux_pre_acts, enc.selected_pre)

    def reconstruct(self, x_raw: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_in"]:
        """Raw in, raw out, inference-mode selection (eval, splicing); returned in x_raw's dtype."""
        x_hat = self.decode(self.encode(x_raw, training=False))
        if self.act_scale != 1.0:
            x_hat = x_hat / self.act_scale
        return x_hat.to(x_raw.dtype)

    # ------------------------------------------------------------------------ decoder constraint

    @torch.no_grad()
    def normalize_decoder_rows_(self) -> None:
        """Rescale every decoder row (latent direction) to unit norm, in fp32."""
        normalize_rows_(self.W_dec)

    @torch.no_grad()
    def project_out_parallel_grad_(self) -> None:
        """Remove from each W_dec.grad row its component along that decoder row (no-op without a grad)."""
        if self.W_dec.grad is not None:
            project_out_parallel_(self.W_dec.grad, self.W_dec)

    # -------------------------------------------------------------------------------- save/load

    def save(self, path: str | Path) -> Path:
        from saekit.sae.checkpoint import save_sae

        return save_sae(self, path)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu", *, select: str | None = None) -> Sae:
        """A checkpoint written by `save`, or a SAELens / sparsify / dictionary_learning directory converted
        on the fly (`select` names one SAE of a directory holding several, e.g. a sparsify hook point)."""
        from saekit.sae.foreign import is_foreign_dir, load_foreign

        if select is not None or is_foreign_dir(Path(path)):
            return load_foreign(path, device, select=select)
        from saekit.sae.checkpoint import load_sae

        return load_sae(path, device=device)

    @classmethod
    def from_pretrained(
        cls,
        release: str,
        sae_id: str,
        device: str | torch.device = "cpu",
        *,
        registry: str | Path | None = None,
    ) -> Sae:
        """SAE `sae_id` of `release` (a Hugging Face repo id, or a release of an SAELens registry file) from
        the local Hugging Face cache; offline only, so a missing one names the directory to provide."""
        from saekit.formats.hf_cache import resolve_pretrained

        return cls.load(resolve_pretrained(release, sae_id, registry=registry), device)

    def fold_act_scale(self) -> Sae:
        """A copy with act_scale folded into the biases (act_scale 1): same raw reconstructions."""
        from saekit.sae.checkpoint import fold_act_scale

        return fold_act_scale(self)

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_sae={self.d_sae}, method={self.cfg.method}"


def make_activation(cfg: SaeConfig) -> Activation:
    """The encode rule of `cfg.method`, built from its section."""
    return get_method(cfg.method).activation(cfg.params)


class _PreActScratch:
    """One reusable pre-activation buffer; never copied with the module (deepcopy gets an empty one)."""

    def __init__(self) -> None:
        self.tensor: Tensor | None = None

    def get(self, shape: tuple[int, int], dtype: torch.dtype, device: torch.device) -> Tensor:
        t = self.tensor
        if t is None or t.shape != shape or t.dtype != dtype or t.device != device:
            self.tensor = None  # free the old one before allocating its replacement
            self.tensor = t = torch.empty(shape, dtype=dtype, device=device)
        return t

    def release(self) -> None:
        self.tensor = None

    def __deepcopy__(self, memo: dict) -> _PreActScratch:
        return _PreActScratch()


def estimate_act_scale(x_sample: Float[Tensor, "n d_in"], mode: str) -> float:
    """Dataset-wise input scale c (inputs are multiplied by c before encoding).

    "mean_norm_sqrt_d": c = sqrt(d_in) / E||x||, so scaled rows have mean norm sqrt(d_in) (SAELens /
    Anthropic convention); "none": 1.0. Computed in fp64 over the sample.
    """
    if mode == "none":
        return 1.0
    if mode != "mean_norm_sqrt_d":
        raise ConfigError(f"sae.normalize_activations must be 'mean_norm_sqrt_d' or 'none', got {mode!r}")
    x = x_sample.detach().to(torch.float64)
    if x.dim() != 2 or x.shape[0] == 0:
        raise DataError(
            f"need a non-empty [n, d_in] sample to estimate the activation scale, got {tuple(x.shape)}"
        )
    if not torch.isfinite(x).all():
        raise DataError("activation sample contains NaN/inf; check the cache (or drop high-norm outliers)")
    mean_norm = x.norm(dim=1).mean().item()
    if mean_norm <= 0:
        raise DataError("activation sample has zero mean norm; cannot normalise it (is the hook point dead?)")
    return math.sqrt(x.shape[1]) / mean_norm
