"""How well a latent steers: what it buys (probability of a target token) against what it costs (the
model's next-token distribution and its loss on ordinary text), so latents can be ranked by steerability.

For each latent, steered alone at one coefficient (the §9.2 intervention of `steering.py`):
- target: the given token, else the latent's own top logit-lens token (what its decoder promotes);
- `target_gain`: p_steered(target) − p_default(target) at the prompt's last position, and `logprob_gain`;
- `kl`: KL(default ‖ steered) of that next-token distribution (nats);
- `ce_cost`: increase of the mean next-token loss on `reference_text` when every position is steered
  (nats/token; `perplexity_ratio` = exp(ce_cost));
- `efficiency`: logprob_gain / max(ce_cost, 0.01) — nats gained on the target per nat lost on ordinary
  text (the floor keeps a harmless latent from dividing by zero). Rows come back best first.

    rows = steerability(model, sae, [12, 40, 7], coef=8.0)
    rows[0]["latent"], rows[0]["target"], rows[0]["efficiency"]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from saekit.analysis.decoder import logit_lens
from saekit.analysis.format import NEUTRAL_PROMPTS, prompt_tokens, token_id_of
from saekit.analysis.steering import check_latents, steer_activations

REFERENCE_TEXT = (
    "The committee met on Tuesday to review the budget for the coming year. After a long discussion, "
    "the members agreed to fund the new library and to repair the roads near the river."
)
"""Ordinary prose on which the loss cost of steering is measured."""
COST_FLOOR = 0.01
"""Smallest cost (nats/token) the efficiency divides by."""


@torch.no_grad()
def steerability(
    model: Any,
    sae: Any,
    latents: Sequence[int],
    coef: float,
    *,
    prompt: str = NEUTRAL_PROMPTS[0],
    target_token: str | None = None,
    reference_text: str = REFERENCE_TEXT,
    batch_size: int = 8,
) -> list[dict[str, Any]]:
    """One row per latent (keys in the module docstring), sorted by efficiency, best first."""
    from saekit.models import logits_of, tokenizer_of

    latents = [int(i) for i in latents]
    check_latents(sae, dict.fromkeys(latents, coef))
    tok = tokenizer_of(model)
    prompt_ids, reference = prompt_tokens(model, prompt), prompt_tokens(model, reference_text)
    fixed = token_id_of(model, target_token) if target_token else None
    targets = [fixed if fixed is not None else int(logit_lens(model, sae, i).argmax()) for i in latents]
    logp_default = torch.log_softmax(logits_of(model, prompt_ids)[0, -1].float().cpu(), -1)
    clean_ce = _mean_nll(logits_of(model, reference).float().cpu(), reference)[0]
    rows = []
    for start in range(0, len(latents), batch_size):
        chunk = latents[start : start + batch_size]
        logp = _steered_logprobs(model, sae, prompt_ids, chunk, coef, from_position=prompt_ids.shape[1] - 1)
        ref_logp = _steered_logprobs(model, sae, reference, chunk, coef, from_position=1, last_only=False)
        ce = _mean_nll(ref_logp, reference)
        for j, latent in enumerate(chunk):
            target = targets[start + j]
            gain = float(logp[j, -1, target] - logp_default[target])
            cost = float(ce[j] - clean_ce)
            rows.append(
                {
                    "latent": latent,
                    "target": tok.decode([target]),
                    "target_gain": float(logp[j, -1, target].exp() - logp_default[target].exp()),
                    "logprob_gain": gain,
                    "kl": float((logp_default.exp() * (logp_default - logp[j, -1])).sum()),
                    "ce_cost": cost,
                    "perplexity_ratio": float(torch.tensor(cost).exp()),
                    "efficiency": gain / max(cost, COST_FLOOR),
                }
            )
    return sorted(rows, key=lambda r: -r["efficiency"])


def _steered_logprobs(
    model: Any,
    sae: Any,
    tokens: Int[Tensor, "1 seq"],
    latents: list[int],
    coef: float,
    *,
    from_position: int,
    last_only: bool = True,
) -> Tensor:
    """Log-probabilities [rows, seq or 1, vocab], row j steering latents[j] alone from `from_position`."""
    from saekit.models import run_with_splice

    rows, seq = len(latents), tokens.shape[1]
    ids = torch.tensor(latents, dtype=torch.long)[:, None]
    coefs = torch.full((rows, 1), float(coef))
    mask = torch.zeros(rows, seq, dtype=torch.bool)
    mask[:, from_position:] = True
    fn = lambda act: steer_activations(sae, act, ids, coefs, mask.to(act.device))
    logits = run_with_splice(model, tokens.expand(rows, seq), sae.hookpoint, fn).float().cpu()
    return torch.log_softmax(logits[:, -1:] if last_only else logits, -1)


def _mean_nll(logits_or_logp: Tensor, tokens: Int[Tensor, "1 seq"]) -> Tensor:
    """Mean next-token negative log-likelihood of `tokens` per row (BOS is never predicted)."""
    logp = torch.log_softmax(logits_or_logp, -1)[:, :-1]
    nxt = tokens[0, 1:].cpu().expand(logp.shape[0], -1)
    return -logp.gather(2, nxt[..., None]).squeeze(-1).mean(1)
