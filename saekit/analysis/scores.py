"""Input and output scores of latents (Arad, Mueller, Belinkov 2025; algorithms.md §9.2).

- Input score s_in(i): the fraction of latent i's top examples whose max-activating token is among T_i,
  the `logit_lens_top_k` tokens its decoder direction promotes most (logit lens through the final norm).
  Latents with fewer than `min_examples` examples get NaN.
- Output score s_out(i) = rank_score · prob_score, where q is the next-token distribution on a neutral
  prompt with latent i boosted by amp·max at the last position: rank_score = 1 − min_{t∈T_i} rank_q(t)/|V|
  (rank 0 = most likely), prob_score = max_{t∈T_i} q(t). With several prompts, every term is averaged
  over prompts (so the averaged s_out is the mean of per-prompt products).

Boosting only the last position leaves every earlier position unchanged, so the prompt's prefix is run once
per pass and each latent steers its own copy of the last position (`saekit.models.shared_prefix`): about one
token of compute per latent instead of a whole prompt, with the same numbers up to fp32 summation order.

    s_in = input_scores(top_max_tokens, lens_ids)
    scores = output_scores(model, sae, range(sae.d_sae), lens_ids=lens_ids)   # dict of [n] tensors
    output_score(model, sae, 7)          # {"rank_score": ..., "prob_score": ..., "output_score": ...}
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from saekit.analysis.decoder import logit_effects
from saekit.analysis.format import NEUTRAL_PROMPTS, prompt_tokens
from saekit.analysis.steering import steer_activations

OUTPUT_AMP = 10.0
OUTPUT_BATCH = 256
"""Latents per output-score pass: with the prefix shared, a pass costs ~one token per latent."""
FULL_FORWARD_BATCH = 64
"""Latents per pass of the full-copy reference path (its logits are [n, seq, vocab])."""


def input_scores(
    top_max_tokens: Int[Tensor, "d_sae n_examples"],
    lens_ids: Int[Tensor, "d_sae lens_k"],
    *,
    min_examples: int = 10,
) -> Float[Tensor, " d_sae"]:
    """s_in per latent from the max-activating token of each top example (−1 = no example)."""
    valid = top_max_tokens >= 0
    hits = (top_max_tokens[:, :, None].long() == lens_ids[:, None, :].long()).any(-1) & valid
    n = valid.sum(1)
    score = hits.sum(1).double() / n.clamp(min=1)
    return torch.where(n >= min_examples, score, torch.full_like(score, math.nan)).float()


def output_score_terms(
    q: Float[Tensor, "batch vocab"], lens_ids: Int[Tensor, "batch lens_k"]
) -> tuple[Float[Tensor, " batch"], Float[Tensor, " batch"]]:
    """(rank_score, prob_score) of next-token distributions q against each row's token set T_i.

    Rank is monotone in probability, so the best-ranked token of T_i is its most likely one: its rank is
    the number of tokens strictly more likely (0 = top), one comparison pass instead of a vocab sort.
    """
    vocab = q.shape[1]
    prob_score = q.gather(1, lens_ids.long().to(q.device)).max(1).values
    best_rank = (q > prob_score[:, None]).sum(1)
    rank_score = 1.0 - best_rank.double() / vocab
    return rank_score.float(), prob_score.float()


@torch.no_grad()
def output_scores(
    model: Any,
    sae: Any,
    latents: Iterable[int] | None = None,
    *,
    prompts: Sequence[str] = NEUTRAL_PROMPTS,
    amp: float = OUTPUT_AMP,
    logit_lens_top_k: int = 20,
    lens_ids: Int[Tensor, "n lens_k"] | None = None,
    batch_size: int = OUTPUT_BATCH,
    shared_prefix: bool = True,
    progress: str | None = None,
) -> dict[str, Float[Tensor, " n"]]:
    """rank_score, prob_score and output_score for `latents` (default: all), `batch_size` latents per
    forward pass, each steered at its own copy of the prompt's last position.

    `shared_prefix` runs the prompt's prefix once per pass (`saekit.models.shared_prefix`), after checking
    on this model that the packed pass reproduces the full forward; False (or a failed check) runs one full
    copy of the prompt per latent, the plain definition, kept as the reference. `progress`: the name of a
    progress bar over latents (None: no bar).
    """
    from saekit.models import final_norm_and_unembed
    from saekit.models.shared_prefix import packed_matches_full

    ids = torch.arange(sae.d_sae) if latents is None else torch.as_tensor(list(latents), dtype=torch.long)
    if lens_ids is None:
        unembed = final_norm_and_unembed(model)
        lens_ids = logit_effects(sae.W_dec[ids], unembed, top_n=1, lens_k=logit_lens_top_k)["lens_ids"]
    totals = {
        "rank_score": torch.zeros(len(ids)),
        "prob_score": torch.zeros(len(ids)),
        "output_score": torch.zeros(len(ids)),
    }
    packed = {p: shared_prefix and packed_matches_full(model, prompt_tokens(model, p)) for p in prompts}
    steps = [(p, lo, step) for p in prompts for step in [_step(model, p, packed[p], batch_size)]
             for lo in range(0, len(ids), step)]  # fmt: skip
    bar = tqdm(total=len(ids) * len(prompts), desc=progress, unit="latent", disable=progress is None)
    for prompt, lo, step in steps:
        chunk = ids[lo : lo + step]
        logits = steered_last_logits(model, sae, prompt_tokens(model, prompt), chunk, amp, packed[prompt])
        rank_s, prob_s = output_score_terms(torch.softmax(logits, -1), lens_ids[lo : lo + step])
        n = chunk.numel()
        totals["rank_score"][lo : lo + n] += rank_s
        totals["prob_score"][lo : lo + n] += prob_s
        totals["output_score"][lo : lo + n] += rank_s * prob_s
        bar.update(n)
    bar.close()
    return {key: value / len(prompts) for key, value in totals.items()}


def steered_last_logits(
    model: Any,
    sae: Any,
    tokens: Int[Tensor, "1 seq"],
    latents: Int[Tensor, " n"],
    amp: float,
    shared_prefix: bool = True,
) -> Float[Tensor, "n vocab"]:
    """Next-token logits (fp32, CPU) after `tokens`, one row per latent boosted by amp·max at the last
    position (the §9.2 intervention)."""
    from saekit.models import run_with_splice
    from saekit.models.shared_prefix import last_position_variants

    n, seq = latents.numel(), tokens.shape[1]
    coefs = torch.full((n, 1), float(amp))
    if shared_prefix:
        prefix = seq - 1

        def steer_copies(act: Tensor) -> Tensor:
            # only the copies are steered; the prefix positions pass through untouched
            copies = act[0, prefix:, None]  # each copy is its own one-position row
            steered = steer_activations(sae, copies, latents[:, None], coefs, _all_true(n, act.device))
            return torch.cat([act[:, :prefix], steered.reshape(1, n, -1)], 1)

        return last_position_variants(model, tokens, n, sae.hookpoint, steer_copies).float().cpu()
    mask = torch.zeros(n, seq, dtype=torch.bool)
    mask[:, -1] = True
    fn = lambda act: steer_activations(sae, act, latents[:, None], coefs, mask.to(act.device))
    return run_with_splice(model, tokens.expand(n, seq), sae.hookpoint, fn)[:, -1].float().cpu()


def _all_true(n: int, device: torch.device) -> Tensor:
    return torch.ones(n, 1, dtype=torch.bool, device=device)


def _step(model: Any, prompt: str, packed: bool, batch_size: int) -> int:
    """Latents per pass: `batch_size`, fewer when the packed sequence would outgrow the model's context or
    (full copies) when the [n, seq, vocab] logits would grow large."""
    from saekit.models.shared_prefix import max_variants

    if packed:
        return min(batch_size, max_variants(model, prompt_tokens(model, prompt)))
    return min(batch_size, FULL_FORWARD_BATCH)


def output_score(
    model: Any,
    sae: Any,
    latent: int,
    *,
    prompts: Sequence[str] = NEUTRAL_PROMPTS,
    amp: float = OUTPUT_AMP,
    logit_lens_top_k: int = 20,
) -> dict[str, float]:
    """s_out of one latent, live (see `output_scores`)."""
    scores = output_scores(model, sae, [latent], prompts=prompts, amp=amp, logit_lens_top_k=logit_lens_top_k)
    return {key: float(value[0]) for key, value in scores.items()}
