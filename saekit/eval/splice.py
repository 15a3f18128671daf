"""Spliced-model losses: next-token CE and KL with the SAE reconstruction in place of a hook activation.

For each batch of token sequences the model runs five times' worth of logits: clean, with x̂ spliced in,
with the activation zeroed, and with it replaced by the dataset mean (algorithms.md §10). Special-token
positions (BOS) are never spliced (the original activation is kept there, as SAELens does) and are left out
of every average. All log-probabilities are taken in fp32 and summed in fp64.

    losses = spliced_losses(model, sae, tokens, batch_size=8, mean_act=cache_mean)
    losses["ce_recovered"]["zero_ablation"], losses["kl"]["sae"]
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from saekit import models
from saekit.eval.memo import ForwardMemo, fingerprint
from saekit.eval.metrics import ReconstructionStats, safe_ratio
from saekit.types import SparseCode

logger = logging.getLogger(__name__)

SpliceFn = Callable[[Tensor], Tensor]
ABLATIONS = ("zero_ablation", "mean_ablation")
EXCLUDED_POSITIONS = "positions whose input token is special (BOS/pad) and the last position (no target)"


def log_probs(logits: Float[Tensor, "batch seq vocab"]) -> Float[Tensor, "batch seq vocab"]:
    """fp32 log-softmax whatever the model's dtype (bf16 log-probs lose ~2 digits of CE)."""
    return torch.log_softmax(logits.float(), dim=-1)


def next_token_nll(
    logp: Float[Tensor, "batch seq vocab"], tokens: Int[Tensor, "batch seq"]
) -> Float[Tensor, "batch seq_minus_1"]:
    """-log p(token[t+1] | ..t) for t = 0..T-2."""
    targets = tokens[:, 1:].unsqueeze(-1)
    return -logp[:, :-1].gather(-1, targets).squeeze(-1)


def kl_per_position(
    logp_ref: Float[Tensor, "batch seq vocab"], logp_other: Float[Tensor, "batch seq vocab"]
) -> Float[Tensor, "batch seq"]:
    """KL(p_ref ‖ p_other) at every position, in fp32."""
    return (logp_ref.exp() * (logp_ref - logp_other)).sum(-1)


def target_positions(special: Bool[Tensor, "batch seq"]) -> Bool[Tensor, "batch seq_minus_1"]:
    """Positions that are scored: t < T-1 whose *input* token is not special."""
    return ~special[:, :-1]


def recovered_fraction(ablated: float, spliced: float, clean: float) -> float | None:
    """(L_abl − L_sae)/(L_abl − L_clean): 1 for a perfect splice, 0 when it is as bad as the ablation."""
    return safe_ratio(ablated - spliced, ablated - clean)


def _keep_special(fn: SpliceFn, special: Bool[Tensor, "batch seq"]) -> SpliceFn:
    """Wrap a splice so special positions keep the original activation: where(mask, orig, new)."""

    def guarded(act: Tensor) -> Tensor:
        mask = special.view(*special.shape, *([1] * (act.ndim - 2)))
        return torch.where(mask, act, fn(act).to(act.dtype))

    return guarded


def reconstruct_with_code(sae: Any, x_raw: Float[Tensor, "rows d_in"]) -> tuple[Tensor, SparseCode]:
    """Raw rows -> (raw x̂, sparse code) with a single encode: the steps of `Sae.reconstruct`, keeping the
    code. Inference-mode selection (`training=False`), so batch-coupled SAEs use their thresholds."""
    code = sae.encode(x_raw, training=False)
    x_hat = sae.decode(code)
    if sae.act_scale != 1.0:
        x_hat = x_hat / sae.act_scale
    return x_hat.to(x_raw.dtype), code


def select_rows(code: SparseCode, keep: Bool[Tensor, " batch"]) -> SparseCode:
    """The CSR code restricted to rows where `keep` is True (renumbered in order)."""
    row = code.row_ids()
    entry_keep = keep[row]
    new_row = torch.cumsum(keep.long(), 0) - 1
    n_kept = int(keep.sum())
    return SparseCode.from_rows(
        new_row[row[entry_keep]], code.indices[entry_keep], code.values[entry_keep], n_kept, code.d_sae
    )


def _sae_splice(sae: Any, keep: Bool[Tensor, "batch seq"], recon: ReconstructionStats | None) -> SpliceFn:
    """x -> x̂ through the SAE on flattened rows; optionally feed the non-special rows to `recon`."""

    def splice(act: Tensor) -> Tensor:
        rows = act.reshape(-1, sae.d_in).float()
        if recon is None:
            return sae.reconstruct(rows).reshape(act.shape)
        x_hat, code = reconstruct_with_code(sae, rows)
        flat_keep = keep.reshape(-1)
        kept_code = select_rows(code, flat_keep) if recon.sparsity is not None else None
        recon.update(rows[flat_keep], x_hat[flat_keep], kept_code)
        return x_hat.reshape(act.shape)

    return splice


class _LossSums:
    """fp64 running sums of CE per variant and KL per non-clean variant, over scored positions."""

    def __init__(self) -> None:
        self.ce: dict[str, float] = {}
        self.kl: dict[str, float] = {}
        self.positions = 0

    def add(self, name: str, logp: Tensor, tokens: Tensor, scored: Tensor, logp_clean: Tensor | None) -> None:
        nll = next_token_nll(logp, tokens)
        self.ce[name] = self.ce.get(name, 0.0) + float(nll[scored].double().sum())
        if logp_clean is not None:
            kl = kl_per_position(logp_clean[:, :-1], logp[:, :-1])
            self.kl[name] = self.kl.get(name, 0.0) + float(kl[scored].double().sum())

    def merge(self, other: _LossSums) -> None:
        """Add another batch's sums (the memoised SAE-independent variants of a batch)."""
        for name, value in other.ce.items():
            self.ce[name] = self.ce.get(name, 0.0) + value
        for name, value in other.kl.items():
            self.kl[name] = self.kl.get(name, 0.0) + value
        self.positions += other.positions

    def summary(self) -> dict[str, Any]:
        n = max(self.positions, 1)
        ce = {k: v / n for k, v in self.ce.items()}
        kl = {k: v / n for k, v in self.kl.items()}
        return {
            "ce_loss": ce,
            "ce_delta": ce["sae"] - ce["clean"],
            "ce_recovered": {a: recovered_fraction(ce[a], ce["sae"], ce["clean"]) for a in ABLATIONS},
            "kl": kl,
            # KL score = (KL_abl − KL_sae)/KL_abl (SAELens); 1 = spliced model matches the clean one
            "kl_score": {a: safe_ratio(kl[a] - kl["sae"], kl[a]) for a in ABLATIONS},
            "positions": self.positions,
        }


@torch.no_grad()
def spliced_losses(
    model: Any,
    sae: Any,
    tokens: Int[Tensor, "n seq"],
    *,
    batch_size: int,
    mean_act: Float[Tensor, " d_in"],
    recon: ReconstructionStats | None = None,
    progress: bool = True,
    memo: ForwardMemo | None = None,
) -> dict[str, Any]:
    """Clean / SAE / zero-ablation / mean-ablation CE and KL at `sae.hookpoint` over `tokens`.

    `mean_act` is the dataset mean of the *raw* activation (mean ablation). If `recon` is given it also
    receives the held-out activations (non-special positions) and their reconstructions, at no extra
    forward cost. A `memo` (of this model) keeps the clean and ablation results per batch, so evaluating
    another SAE on the same tokens runs only the spliced forward. Returns a JSON-serialisable dict (see
    `_LossSums.summary`).
    """
    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must be [n, seq] with seq >= 2, got {tuple(tokens.shape)}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if memo is not None and memo.model is not None and memo.model is not model:
        raise ValueError("spliced_losses: the memo holds another model's forwards; use one memo per model")
    sums = _LossSums()
    starts = range(0, tokens.shape[0], batch_size)
    for start in tqdm(starts, desc="splice", unit="batch", disable=not progress, leave=False):
        _splice_batch(model, sae, tokens[start : start + batch_size], mean_act, recon, sums, memo)
    if sums.positions == 0:
        raise ValueError("no scored positions: every input token was special; use longer sequences")
    out = sums.summary()
    out.update(sequences=int(tokens.shape[0]), context_length=int(tokens.shape[1]))
    return out


class _Reference:
    """The SAE-independent part of one batch: clean log-probs and the clean/ablation loss sums."""

    def __init__(self, logp_clean: Tensor, sums: _LossSums) -> None:
        self.logp_clean = logp_clean
        self.sums = sums

    def nbytes(self) -> int:
        return self.logp_clean.numel() * self.logp_clean.element_size()


def _reference(model: Any, batch: Tensor, hookpoint: str, special: Tensor, mean_vec: Tensor) -> _Reference:
    scored = target_positions(special)
    ablations: dict[str, SpliceFn] = {
        "zero_ablation": torch.zeros_like,
        "mean_ablation": lambda act: mean_vec.reshape(act.shape[2:]).expand_as(act),
    }
    sums = _LossSums()
    logp_clean = log_probs(models.logits_of(model, batch))
    sums.add("clean", logp_clean, batch, scored, None)
    for name, fn in ablations.items():
        logits = models.run_with_splice(model, batch, hookpoint, _keep_special(fn, special))
        sums.add(name, log_probs(logits), batch, scored, logp_clean)
    sums.positions = int(scored.sum())
    return _Reference(logp_clean, sums)


def _splice_batch(
    model: Any,
    sae: Any,
    batch: Tensor,
    mean_act: Tensor,
    recon: ReconstructionStats | None,
    sums: _LossSums,
    memo: ForwardMemo | None,
) -> None:
    device = next(iter(sae.parameters())).device if hasattr(sae, "parameters") else batch.device
    batch = batch.to(device)
    special = models.special_token_mask(batch, model).to(device)
    mean_vec = mean_act.to(device=device, dtype=torch.float32).reshape(-1)

    def compute() -> _Reference:
        return _reference(model, batch, sae.hookpoint, special, mean_vec)

    if memo is None:
        ref = compute()
    else:
        key = ("splice", sae.hookpoint, str(device), fingerprint(batch), fingerprint(mean_vec))
        ref = memo.get_or_compute(key, compute, _Reference.nbytes)
    sums.merge(ref.sums)
    splice = _keep_special(_sae_splice(sae, ~special, recon), special)
    logits = models.run_with_splice(model, batch, sae.hookpoint, splice)
    sums.add("sae", log_probs(logits), batch, target_positions(special), ref.logp_clean)
