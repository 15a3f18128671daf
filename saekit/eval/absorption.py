"""Feature absorption on the first-letter task (Chanin et al. 2024, "A is for Absorption"), SAEBench names.

Steps, per letter L (only letters with enough words):
1. A linear probe (logistic regression on the model activations, one-vs-rest) says whether a word token
   starts with L; its unit weight vector p̂_L is the ground-truth "starts with L" direction.
2. k-sparse probing on SAE latents: rank latents by mean activation on L-words minus others; for
   k = 1 … K_MAX fit a logistic probe on the top-k latents; the *main latents* are the top-k* where k*
   is the last k whose F1 gain over k−1 exceeded SPLIT_F1_GAIN (`num_split_features` = k*).
3. On held-out L-words that the model probe gets right (true positives), with a_j the latent activations
   and c_j = a_j·⟨d_j, p̂_L⟩ each latent's contribution to the reconstruction's projection on p̂_L:
   - absorption fraction = (Σ_{j∉main, c_j>0} c_j) / (Σ_{j, c_j>0} c_j), 0 when nothing projects;
   - full absorption: every main latent is 0 and some other latent has ⟨d_j, p̂_L⟩ ≥ ABSORBER_COSINE and
     c_j ≥ ABSORBER_SHARE·⟨x, p̂_L⟩ (it carries the letter instead).
Outputs (SAEBench field names): `mean_absorption_fraction_score`, `mean_full_absorption_score`,
`mean_num_split_features` and their `std_dev_*`, plus per-letter `first_letter`, `mean_absorption_fraction`,
`full_absorption_rate`, `num_full_absorption`, `num_probe_true_positives`, `num_split_features`.

The activations come from `first_letter_activations` (a word alone after BOS, at the word's position),
or from any (x, letter) set — the unit tests plant absorption in synthetic vectors.

    x, letters = first_letter_activations(model, hookpoint, words_per_letter=40)
    report = absorption_scores(sae, x, letters)
"""

from __future__ import annotations

import logging
import math
import re
import string
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

logger = logging.getLogger(__name__)

K_MAX = 5
SPLIT_F1_GAIN = 0.03
ABSORBER_COSINE = 0.025
ABSORBER_SHARE = 0.4
MIN_WORDS = 8
PROBE_STEPS = 100
_WORD = re.compile(r"^ [a-z]{3,}$")


# ---------------------------------------------------------------------------------------- data


def first_letter_words(tokenizer: Any, words_per_letter: int) -> list[tuple[int, str]]:
    """(token id, letter) for single-token lowercase words (leading space, ≥ 3 letters), the first
    `words_per_letter` of each letter by token id (a fixed, frequency-like order in BPE vocabularies)."""
    per_letter: dict[str, list[int]] = {c: [] for c in string.ascii_lowercase}
    vocab = tokenizer.get_vocab()
    for token_id in sorted(vocab.values()):
        text = tokenizer.decode([token_id])
        if _WORD.match(text) and len(per_letter[text[1]]) < words_per_letter:
            per_letter[text[1]].append(token_id)
    return [(tid, letter) for letter, ids in per_letter.items() for tid in ids]


@torch.no_grad()
def first_letter_activations(
    model: Any, hookpoint: str, *, words_per_letter: int = 40, batch_size: int = 64
) -> tuple[Float[Tensor, "n d_in"], list[str]]:
    """Activation at each word token (sequence = BOS, word) and the word's first letter."""
    from saekit.models import bos_token_id, capture, tokenizer_of

    words = first_letter_words(tokenizer_of(model), words_per_letter)
    tokens = torch.tensor([[bos_token_id(model), tid] for tid, _ in words])
    acts = [
        capture(model, tokens[lo : lo + batch_size], [hookpoint]).acts[hookpoint][:, 1].float().cpu()
        for lo in range(0, len(tokens), batch_size)
    ]
    return torch.cat(acts), [letter for _, letter in words]


# ---------------------------------------------------------------------------------------- probes


def fit_logistic(
    x: Tensor, y: Tensor, *, steps: int = PROBE_STEPS, l2: float = 1e-3
) -> tuple[Tensor, Tensor]:
    """Binary logistic regression (full-batch L-BFGS on standardised features); returns (w, b) in the
    original feature space."""
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    w = torch.zeros(x.shape[1], dtype=x.dtype, requires_grad=True)
    b = torch.zeros((), dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")
    pos_weight = (len(y) - y.sum()) / y.sum().clamp_min(1)  # balance the rare positive class

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y, pos_weight=pos_weight)
        loss = loss + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w_orig = (w / std).detach()
    return w_orig, (b - (mean * w / std).sum()).detach()


def f1_score(pred: Tensor, y: Tensor) -> float:
    tp = float((pred & y).sum())
    return 0.0 if tp == 0 else 2 * tp / (float(pred.sum()) + float(y.sum()))


# ---------------------------------------------------------------------------------------- absorption


@torch.no_grad()
def _latent_acts(sae: Any, x: Tensor) -> Tensor:
    code = sae.encode(x.to(sae.W_dec.device), training=False)
    dense = torch.zeros(len(x), sae.d_sae, dtype=torch.float64)
    dense[code.row_ids().cpu(), code.indices.cpu()] = code.values.double().cpu()
    return dense


def absorption_scores(
    sae: Any, x: Float[Tensor, "n d_in"], letters: list[str], seed: int = 0
) -> dict[str, Any]:
    """The absorption report (see the module docstring); a fixed 70/30 split by `seed`."""
    x = x.double().cpu()
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=gen)
    cut = int(0.7 * len(x))
    train, test = perm[:cut], perm[cut:]
    acts = _latent_acts(sae, x)
    dec = sae.W_dec.detach().double().cpu()
    dec = dec / dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    details = []
    for letter in sorted(set(letters)):
        y = torch.tensor([c == letter for c in letters])
        if int(y[train].sum()) < MIN_WORDS or int(y[test].sum()) < 2:
            continue
        details.append(_letter_report(letter, x, acts, dec, y, train, test))
    return _summarise(details)


def _letter_report(letter, x, acts, dec, y, train, test) -> dict[str, Any]:
    w, b = fit_logistic(x[train], y[train].double())
    probe = w / w.norm().clamp_min(1e-12)
    main, splits = _main_latents(acts, y, train, test)
    tp = test[(x[test] @ w + b > 0) & y[test]]
    proj = dec @ probe  # ⟨d_j, p̂⟩
    fractions, full = [], 0
    for row in tp.tolist():
        contrib = acts[row] * proj
        positive = contrib.clamp_min(0.0)
        total = float(positive.sum())
        outside = total - float(positive[main].sum())
        fractions.append(outside / total if total > 0 else 0.0)
        others = torch.ones(len(proj), dtype=torch.bool)
        others[main] = False
        absorber = others & (proj >= ABSORBER_COSINE) & (contrib >= ABSORBER_SHARE * float(x[row] @ probe))
        if bool((acts[row, main] == 0).all()) and bool(absorber.any()):
            full += 1
    return {
        "first_letter": letter,
        "mean_absorption_fraction": sum(fractions) / len(fractions) if fractions else 0.0,
        "full_absorption_rate": full / len(fractions) if fractions else 0.0,
        "num_full_absorption": full,
        "num_probe_true_positives": len(fractions),
        "num_split_features": splits,
    }


def _main_latents(acts: Tensor, y: Tensor, train: Tensor, test: Tensor) -> tuple[list[int], int]:
    """k-sparse probing: top latents by mean-activation difference; keep adding while F1 gains > τ."""
    a_train, y_train = acts[train], y[train]
    diff = a_train[y_train].mean(0) - a_train[~y_train].mean(0)
    ranked = torch.argsort(diff, descending=True)[:K_MAX].tolist()
    best_f1, chosen = 0.0, 1
    for k in range(1, len(ranked) + 1):
        cols = ranked[:k]
        w, b = fit_logistic(a_train[:, cols], y_train.double(), steps=50)
        f1 = f1_score(acts[test][:, cols] @ w + b > 0, y[test])
        if k == 1 or f1 - best_f1 > SPLIT_F1_GAIN:
            chosen = k
        best_f1 = max(best_f1, f1)
    return ranked[:chosen], chosen


def _summarise(details: list[dict[str, Any]]) -> dict[str, Any]:
    def mean_std(key: str) -> tuple[float, float]:
        values = [d[key] for d in details]
        if not values:
            return math.nan, math.nan
        mean = sum(values) / len(values)
        return mean, (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5

    fraction, fraction_sd = mean_std("mean_absorption_fraction")
    full, full_sd = mean_std("full_absorption_rate")
    splits, splits_sd = mean_std("num_split_features")
    return {
        "eval_type_id": "absorption_first_letter",
        "mean": {
            "mean_absorption_fraction_score": fraction,
            "mean_full_absorption_score": full,
            "mean_num_split_features": splits,
            "std_dev_absorption_fraction_score": fraction_sd,
            "std_dev_full_absorption_score": full_sd,
            "std_dev_num_split_features": splits_sd,
        },
        "eval_result_details": details,
        "settings": {
            "k_max": K_MAX,
            "split_f1_gain": SPLIT_F1_GAIN,
            "absorber_cosine": ABSORBER_COSINE,
            "absorber_share": ABSORBER_SHARE,
            "prompt": "BOS + the word token alone (activation at the word)",
        },
    }
