"""aux_zipf (PROVISIONAL, algorithms.md §4.3): AuxK generalised from dead latents to underutilised ones.

Ayonrinde (2024) proposes an auxiliary loss that pulls under-used latents towards a Zipf-shaped frequency
profile; its exact formula could not be verified, so this is saekit's provisional definition, to be
replaced once the paper's is read:

1. f_i = EMA of latent i's firing frequency (fraction of tokens with value > 1e-3), updated once per
   training step with rate min(1, B / sae.dead_tokens) — a horizon of about dead_tokens tokens, counted in
   tokens like the dead-latent window (§11.8). The first step sets f directly.
2. Rank latents by f (r = 1 most frequent). Target f*(r) = min(1, c·r^(−s)) with s = zipf_exponent and
   c chosen so that Σ_r f*(r) = k (Σ f is the mean L0). The cap at 1 is a saekit addition: a frequency
   cannot exceed 1, and without it c > 1 for wide dictionaries (c ≈ 3.1 at n = 16384, k = 32, s = 1).
3. Underutilised set U = {i : f_i < τ·f*(r_i)} (τ = zipf_tau) ∪ {latents the tracker calls dead}.
4. AuxK (Gao et al.) with U in place of the dead set: the top min(k_aux, |U|) latents of U per row model
   the detached residual, decoded without bias, each selected latent's value scaled by its weight
   w_i = 1 − f_i/f*(r_i) ∈ [0, 1] (1 for dead latents), normalised by the residual's batch variance.
   With U equal to the dead set every weight is 1 and the term is exactly `auxk_loss`.

Note: under a steep target the most frequent latents can also fall short of f* (their targets approach
1), so U usually holds some head latents besides the tail; that is what the definition says.

The method trains with any selection rule (`activation`, Mutual Choice by default as in the paper). State
(the frequency EMA) is an attribute of the run's objective; `state_dict()` / `load_state_dict(s, sae)`
return and take JSON-native data so a checkpoint can carry it in trainer_state.json exactly.

    sae = Sae(d_in, SaeConfig.make("aux_zipf", k=32))
    objective = make_objective(sae.cfg)
    out = objective(sae, batch, dead_mask=tracker.dead_mask(), mse_scale=s)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from saekit.config_io import require
from saekit.errors import ConfigError, RunDirError
from saekit.sae.method import Method, register_method
from saekit.sae.methods.selection import SelectionParams, make_selection
from saekit.sae.model import Sae
from saekit.sae.objective import FIRE_THRESHOLD, Objective, StepOutput, aux_settings, auxk_loss, firing
from saekit.types import Batch, SparseCode

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ target


def zipf_target(d_sae: int, k: float, exponent: float) -> Float[Tensor, " d_sae"]:
    """f*(r) for ranks r = 1..d_sae (descending): min(1, c·r^(−s)) with Σ f* = k, in fp64.

    Water-filling: with the first j ranks capped at 1, c = (k − j) / Σ_{r>j} r^(−s); the answer is the
    smallest j for which rank j+1 is not above the cap.
    """
    if not 0 < k <= d_sae:
        raise ConfigError(f"aux_zipf: the target needs 0 < k <= d_sae, got k={k}, d_sae={d_sae}")
    if exponent < 0:
        raise ConfigError(f"sae.zipf_exponent must be >= 0 (1 is Zipf's law), got {exponent}")
    shape = torch.arange(1, d_sae + 1, dtype=torch.float64).pow(-exponent)
    tail = shape.flip(0).cumsum(0).flip(0)  # tail[j] = Σ_{r > j} r^(−s) (0-based j)
    capped = torch.arange(d_sae, dtype=torch.float64)
    scale = (k - capped) / tail
    fits = scale * shape <= 1.0
    j = int(torch.nonzero(fits)[0]) if bool(fits.any()) else d_sae
    if j >= d_sae:
        return torch.ones(d_sae, dtype=torch.float64)
    target = (scale[j] * shape).clamp(max=1.0)
    target[:j] = 1.0
    return target


def underutilised_latents(
    freq: Float[Tensor, " d_sae"],
    target: Float[Tensor, " d_sae"],
    tau: float,
    dead_mask: Bool[Tensor, " d_sae"] | None = None,
) -> tuple[Int[Tensor, " n_under"], Float[Tensor, " n_under"]]:
    """U = {f_i < τ·f*(rank_i)} ∪ dead, and weights 1 − f_i/f*(rank_i) clamped to [0, 1] (1 when dead).

    `target` is indexed by rank (descending); latents are ranked by frequency, most frequent first.
    """
    order = torch.argsort(freq, descending=True, stable=True)
    per_latent = torch.empty_like(target)
    per_latent[order] = target.to(per_latent.device)
    freq64 = freq.to(torch.float64)
    under = freq64 < tau * per_latent
    weights = (1.0 - freq64 / per_latent).clamp(0.0, 1.0)
    if dead_mask is not None:
        dead = dead_mask.to(under.device)
        under |= dead
        weights = torch.where(dead, torch.ones_like(weights), weights)
    idx = torch.nonzero(under).squeeze(1)
    return idx, weights[idx].float()


# --------------------------------------------------------------------------------------- aux loss


def weighted_auxk_loss(
    sae: Sae,
    x: Float[Tensor, "batch d_in"],
    residual: Float[Tensor, "batch d_in"],
    aux_pre_acts: Float[Tensor, "batch n_aux"],
    aux_idx: Int[Tensor, " n_aux"],
    weights: Float[Tensor, " n_aux"],
    k_aux: int,
    *,
    dense: bool | None = None,
) -> Float[Tensor, ""]:
    """`auxk_loss` over the columns `aux_idx` with each latent's value scaled by its weight:
    ê = Σ_j w_j·ReLU(h_j)·W_dec[j] over the top min(k_aux, n_aux) of h[:, aux_idx] per row, no bias;
    loss = mean((ê − e)²) / mean((e − ē)²) with e the detached residual; non-finite → 0.
    Same dense/sparse split as `auxk_loss` (it is `auxk_loss(..., weights=weights)`)."""
    return auxk_loss(sae, x, residual, aux_pre_acts, aux_idx, k_aux, weights=weights, dense=dense)


# -------------------------------------------------------------------------------------- objective


@dataclass(frozen=True)
class AuxZipfParams(SelectionParams):
    activation: Literal["batchtopk", "mutual_choice", "feature_choice", "topk"] = "mutual_choice"
    """Selection rule trained with the aux term (Mutual Choice in the paper)."""
    zipf_exponent: float = 1.0
    """Exponent s of the Zipf frequency target f*(r) = min(1, c r^-s), which sums to k (provisional)."""
    zipf_tau: float = 0.5
    """A latent is underutilised when its frequency < tau * target."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.zipf_exponent >= 0, "zipf_exponent", "must be >= 0 (1 is Zipf's law)")
        require(0 < self.zipf_tau <= 1, "zipf_tau", "must be in (0, 1]")


class AuxZipfObjective(Objective):
    """Main FVU term + aux_coef · (weighted AuxK over underutilised latents); see the module docstring."""

    def __init__(self, params: AuxZipfParams) -> None:
        super().__init__(params)
        self.freq: Float[Tensor, " d_sae"] | None = None
        """Per-latent firing-frequency EMA (fp64), None until the first step."""
        self.freq_rate: float | None = None
        """Override of the EMA rate (tests); None: min(1, batch / sae.dead_tokens)."""

    def __call__(
        self, sae: Sae, batch: Batch, *, dead_mask: Bool[Tensor, " d_sae"] | None, mse_scale: float
    ) -> StepOutput:
        k_aux, aux_coef = aux_settings(self.params, sae.d_in)
        x = batch.acts.to(sae.W_dec.dtype)
        aux_idx, weights = self.aux_set(sae, dead_mask)
        use_aux = aux_idx.numel() > 0 and k_aux > 0 and aux_coef > 0
        out = sae(x, batch, aux_columns=aux_idx if use_aux else None)
        sq_err = (out.x_hat - x).pow(2)
        main = mse_scale * sq_err.mean()
        aux = torch.zeros((), device=x.device)
        if use_aux:
            aux = weighted_auxk_loss(sae, x, x - out.x_hat, out.aux_pre_acts, aux_idx, weights, k_aux)
        loss = main + aux_coef * aux
        rate = min(1.0, len(batch) / sae.cfg.dead_tokens) if self.freq_rate is None else self.freq_rate
        self.update_frequencies_(sae, out.code, rate)
        n_dead = 0 if dead_mask is None else int(dead_mask.sum().item())
        return _step_output(loss, main, aux, x, sq_err, out.code, n_dead, aux_idx.numel())

    def aux_set(
        self, sae: Sae, dead_mask: Bool[Tensor, " d_sae"] | None
    ) -> tuple[Int[Tensor, " n_under"], Float[Tensor, " n_under"]]:
        """Latents the aux term may use and their weights, from the frequencies seen before this step
        (only the dead set, weight 1, until a first step has been seen)."""
        device = sae.W_dec.device
        if self.freq is None:
            dead = torch.zeros(sae.d_sae, dtype=torch.bool, device=device) if dead_mask is None else dead_mask
            idx = torch.nonzero(dead.to(device)).squeeze(1)
            return idx, torch.ones(idx.numel(), device=device)
        target = zipf_target(sae.d_sae, self.params.k, self.params.zipf_exponent).to(device)
        return underutilised_latents(self.freq, target, self.params.zipf_tau, dead_mask)

    @torch.no_grad()
    def update_frequencies_(self, sae: Sae, code: SparseCode, rate: float) -> None:
        """f ← (1 − rate)·f + rate·(fires per latent / tokens), in fp64; the first call sets f."""
        fires = torch.bincount(code.indices[code.values > FIRE_THRESHOLD], minlength=sae.d_sae)
        observed = fires.to(torch.float64) / max(code.batch_size, 1)
        self.freq = observed if self.freq is None else (1.0 - rate) * self.freq + rate * observed

    def state_dict(self) -> dict[str, Any]:
        """JSON-native state (fp64 values survive a JSON round trip exactly)."""
        return {"freq_ema": None if self.freq is None else self.freq.cpu().tolist()}

    def load_state_dict(self, state: dict[str, Any], sae: Sae) -> None:
        freq = state.get("freq_ema")
        if freq is None:
            self.freq = None
            return
        freq = torch.as_tensor(freq, dtype=torch.float64, device=sae.W_dec.device)
        if freq.shape != (sae.d_sae,):
            raise RunDirError(
                f"aux_zipf state holds {tuple(freq.shape)} frequencies but the SAE has d_sae={sae.d_sae}; "
                "the checkpoint belongs to a different SAE"
            )
        self.freq = freq


def _step_output(loss, main, aux, x, sq_err, code: SparseCode, n_dead: int, n_under: int) -> StepOutput:
    with torch.no_grad():
        batch_var_sum = (x - x.mean(dim=0)).pow(2).sum()
        # One device→host transfer for every logged number.
        main_v, aux_v, total_v, mse_v, fvu_batch, l0 = torch.stack(
            [
                main.detach(),
                aux.detach(),
                loss.detach(),
                sq_err.mean().detach(),
                sq_err.sum().detach() / batch_var_sum,
                code.l0_per_row().float().mean(),
            ]
        ).tolist()
    return StepOutput(
        loss=loss,
        losses={"main": main_v, "aux": aux_v, "total": total_v},
        metrics={
            "fvu": main_v,
            "fvu_batch": fvu_batch,
            "mse": mse_v,
            "l0": l0,
            "n_dead": float(n_dead),
            "n_underutilised": float(n_under),
        },
        **firing(code),
    )


AUX_ZIPF = register_method(
    Method(
        name="aux_zipf",
        params=AuxZipfParams,
        activation=make_selection,
        objective=AuxZipfObjective,
        summary="aux_zipf (Ayonrinde 2024, provisional): AuxK over latents below a Zipf frequency target",
    )
)
