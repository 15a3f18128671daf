"""Steering with SAE latents (Arad et al., algorithms.md §9.2) and a small fixed-seed sampler.

The intervention, at the SAE's hook point: encode x once, keep the error ε = x − x̂ (float64, from that same
encode), add `coef · max_j f_j` to latent i at the steered positions only, and output decode(f') + ε.
Since ε comes from the same code, a zero coefficient returns x itself and the model is unchanged.
Generation re-runs the whole growing sequence each step (no KV cache: outputs are short) and steers the
last prompt position and every generated position — exactly what KV-cached generation steers.

    result = steer(model, sae, "I think that", {123: 8.0}, max_new_tokens=20, seed=0, temperature=0.7)
    result.default_text, result.steered_text, result.kl
    rows = coefficient_sweep(model, sae, "I think that", 123, [0, 2, 4, 8], target_token=" dog",
                             max_new_tokens=8)
    rows[2]["text"]                                    # greedy continuation at coefficient 4
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from saekit.analysis.format import prompt_tokens, token_id_of
from saekit.types import SparseCode


@dataclass
class SteeringResult:
    """Default vs steered continuation of one prompt (texts are the generated part only)."""

    prompt: str
    latents: dict[int, float]
    default_text: str
    steered_text: str
    next_token_shift: list[dict[str, Any]]
    """Tokens whose next-token probability moved most at the prompt's last position, largest Δprob first:
    the biggest increases then the biggest decreases, each {token, token_id, p_default, p_steered, delta}."""
    kl: float
    """KL(p_default ‖ p_steered) of the next-token distribution after the prompt (nats)."""
    default_ids: list[int] = field(default_factory=list)
    steered_ids: list[int] = field(default_factory=list)


# ---------------------------------------------------------------------------------------- intervention


def boost_code(
    code: SparseCode,
    latents: Int[Tensor, "batch m"],
    coefs: Float[Tensor, "batch m"],
    steer_mask: Bool[Tensor, "batch seq"],
) -> SparseCode:
    """f'[t, i] = f[t, i] + coef · max_j f[t, j] at steered positions t (code rows are batch·seq, row-major).

    Extra (row, latent, value) entries are appended; the decoder sums duplicates, so a latent that was
    already active is boosted on top of its value. Zero boosts add no entry, leaving the code identical.
    """
    n_rows = code.batch_size
    batch, seq = steer_mask.shape
    assert batch * seq == n_rows, "steer_mask must cover every row of the code"
    row_ids = code.row_ids()
    row_max = torch.zeros(n_rows, dtype=code.values.dtype, device=code.values.device)
    row_max.scatter_reduce_(0, row_ids, code.values.detach(), reduce="amax")
    rows = steer_mask.reshape(-1).nonzero().flatten()
    owner = rows // seq
    m = latents.shape[1]
    new_rows = rows.repeat_interleave(m)
    new_latents = latents.to(rows.device)[owner].reshape(-1).long()
    new_values = (coefs.to(row_max)[owner] * row_max[rows, None]).reshape(-1)
    keep = new_values != 0
    return SparseCode.from_rows(
        torch.cat([row_ids, new_rows[keep]]),
        torch.cat([code.indices, new_latents[keep]]),
        torch.cat([code.values, new_values[keep]]),
        n_rows,
        code.d_sae,
    )


@torch.no_grad()
def steer_activations(
    sae: Any,
    x: Float[Tensor, "batch seq d_in"],
    latents: Int[Tensor, "batch m"],
    coefs: Float[Tensor, "batch m"],
    steer_mask: Bool[Tensor, "batch seq"],
) -> Float[Tensor, "batch seq d_in"]:
    """The §9.2 intervention on raw hook activations: decode(f') + ε with ε = x − decode(f) in float64."""
    rows = x.reshape(-1, x.shape[-1]).float()
    code = sae.encode(rows, training=False)
    scale = float(sae.act_scale)
    error = rows.double() - sae.decode(code).double() / scale
    boosted = boost_code(code, latents, coefs, steer_mask.to(rows.device))
    out = sae.decode(boosted).double() / scale + error
    return out.to(x.dtype).reshape(x.shape)


def steering_splice(sae: Any, latents: dict[int, float], from_position: int) -> Callable[[Tensor], Tensor]:
    """A splice fn for `run_with_splice` that steers every position >= `from_position` of every row."""
    ids = torch.tensor([list(latents)], dtype=torch.long)
    coefs = torch.tensor([list(latents.values())], dtype=torch.float32)

    def splice(act: Tensor) -> Tensor:
        batch = act.shape[0]
        mask = _from_position(act, from_position)
        return steer_activations(sae, act, ids.expand(batch, -1), coefs.expand(batch, -1), mask)

    return splice


# ---------------------------------------------------------------------------------------- generation


def pick_token(logits: Float[Tensor, " vocab"], temperature: float, generator: torch.Generator) -> int:
    """Greedy at temperature 0, else a sample from softmax(logits / temperature)."""
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


@torch.no_grad()
def generate(
    model: Any,
    tokens: Int[Tensor, "1 seq"],
    *,
    max_new_tokens: int,
    seed: int = 0,
    temperature: float = 0.0,
    splice: tuple[str, Callable[[Tensor], Tensor]] | None = None,
    stop_ids: Sequence[int] = (),
) -> Int[Tensor, "1 seq_out"]:
    """Append up to `max_new_tokens` tokens, re-running the whole sequence (optionally spliced) per step."""
    from saekit.models import logits_of, run_with_splice

    generator = torch.Generator().manual_seed(seed)
    tokens = tokens.cpu()
    for _ in range(max_new_tokens):
        if splice is None:
            logits = logits_of(model, tokens)
        else:
            logits = run_with_splice(model, tokens, splice[0], splice[1])
        nxt = pick_token(logits[0, -1].float().cpu(), temperature, generator)
        tokens = torch.cat([tokens, torch.tensor([[nxt]])], dim=1)
        if nxt in stop_ids:
            break
    return tokens


@torch.no_grad()
def steer(
    model: Any,
    sae: Any,
    prompt: str,
    latents: dict[int, float],
    max_new_tokens: int = 20,
    seed: int = 0,
    temperature: float = 0.7,
    *,
    shift_top_n: int = 5,
) -> SteeringResult:
    """Generate from `prompt` with and without steering `latents` ({latent: coef}), same seed for both."""
    from saekit.models import logits_of, run_with_splice, tokenizer_of

    check_latents(sae, latents)
    tokens = prompt_tokens(model, prompt)
    first = tokens.shape[1] - 1  # the last prompt position and everything generated after it
    splice = steering_splice(sae, latents, first)
    tok = tokenizer_of(model)
    stop = [tok.eos_token_id] if tok.eos_token_id is not None else []
    kw = dict(max_new_tokens=max_new_tokens, seed=seed, temperature=temperature, stop_ids=stop)
    default = generate(model, tokens, **kw)[0, tokens.shape[1] :].tolist()
    steered = generate(model, tokens, splice=(sae.hookpoint, splice), **kw)[0, tokens.shape[1] :].tolist()
    logp_default = torch.log_softmax(logits_of(model, tokens)[0, -1].float(), -1)
    logp_steered = torch.log_softmax(run_with_splice(model, tokens, sae.hookpoint, splice)[0, -1].float(), -1)
    kl = float((logp_default.exp() * (logp_default - logp_steered)).sum())
    return SteeringResult(
        prompt=prompt,
        latents=dict(latents),
        default_text=tok.decode(default),
        steered_text=tok.decode(steered),
        next_token_shift=_probability_shift(tok, logp_default.exp(), logp_steered.exp(), shift_top_n),
        kl=kl,
        default_ids=default,
        steered_ids=steered,
    )


def _probability_shift(tok: Any, p_default: Tensor, p_steered: Tensor, top_n: int) -> list[dict[str, Any]]:
    delta = (p_steered - p_default).double()
    up = torch.topk(delta, top_n).indices.tolist()
    down = [i for i in torch.topk(delta, top_n, largest=False).indices.tolist() if i not in up]
    rows = []
    for i in up + down:
        rows.append(
            {
                "token": tok.decode([i]),
                "token_id": i,
                "p_default": float(p_default[i]),
                "p_steered": float(p_steered[i]),
                "delta": float(delta[i]),
            }
        )
    return sorted(rows, key=lambda r: -r["delta"])


@torch.no_grad()
def coefficient_sweep(
    model: Any,
    sae: Any,
    prompt: str,
    latent: int | Sequence[int],
    coefs: Sequence[float],
    target_token: str | None = None,
    *,
    max_new_tokens: int = 0,
) -> list[dict[str, Any]]:
    """Next-token effect of steering `latent` (or several latents together, each at the same coefficient)
    at the prompt's last position, one row per coefficient: {coef, kl (to the unsteered distribution),
    top_token, top_prob, and target_logit/target_prob}. With `max_new_tokens`, each row also holds `text`:
    the greedy continuation generated while steering (all coefficients decoded together, one batch)."""
    from saekit.models import logits_of, run_with_splice, tokenizer_of

    latents = [int(latent)] if isinstance(latent, int) else [int(i) for i in latent]
    check_latents(sae, dict.fromkeys(latents, 0.0))
    tokens = prompt_tokens(model, prompt)
    n, seq = len(coefs), tokens.shape[1]
    ids = torch.tensor([latents] * n, dtype=torch.long)
    coef_t = torch.tensor(list(coefs), dtype=torch.float32)[:, None].expand(n, len(latents))
    mask = torch.zeros(n, seq, dtype=torch.bool)
    mask[:, -1] = True
    fn = lambda act: steer_activations(sae, act, ids, coef_t, mask.to(act.device))
    logits = run_with_splice(model, tokens.expand(n, seq), sae.hookpoint, fn)[:, -1].float().cpu()
    logp = torch.log_softmax(logits, -1)
    logp_clean = torch.log_softmax(logits_of(model, tokens)[0, -1].float().cpu(), -1)
    kl = (logp_clean.exp() * (logp_clean - logp)).sum(-1)
    target = token_id_of(model, target_token) if target_token is not None else None
    tok = tokenizer_of(model)
    texts = _greedy_steered_texts(model, sae, tokens, ids, coef_t, max_new_tokens) if max_new_tokens else None
    rows = []
    for j, coef in enumerate(coefs):
        top = int(torch.argmax(logp[j]))
        row = {
            "coef": float(coef),
            "kl": float(kl[j]),
            "top_token": tok.decode([top]),
            "top_prob": float(logp[j, top].exp()),
        }
        if target is not None:
            row.update(
                target_token=target_token,
                target_id=target,
                target_logit=float(logits[j, target]),
                target_prob=float(logp[j, target].exp()),
            )
        if texts is not None:
            row["text"] = texts[j]
        rows.append(row)
    return rows


@torch.no_grad()
def _greedy_steered_texts(
    model: Any,
    sae: Any,
    tokens: Int[Tensor, "1 seq"],
    ids: Int[Tensor, "rows m"],
    coefs: Float[Tensor, "rows m"],
    max_new_tokens: int,
) -> list[str]:
    """Greedy continuations of one prompt, row r steered with (ids[r], coefs[r]) from the last prompt
    position on; rows share every forward. A row stops growing at the end-of-text token."""
    from saekit.models import run_with_splice, tokenizer_of

    tok = tokenizer_of(model)
    rows, first = ids.shape[0], tokens.shape[1] - 1
    seqs = tokens.cpu().expand(rows, -1).clone()
    fn = lambda act: steer_activations(sae, act, ids, coefs, _from_position(act, first))
    for _ in range(max_new_tokens):
        nxt = run_with_splice(model, seqs, sae.hookpoint, fn)[:, -1].argmax(-1).cpu()
        seqs = torch.cat([seqs, nxt[:, None]], dim=1)
        if tok.eos_token_id is not None and bool(
            (seqs[:, tokens.shape[1] :] == tok.eos_token_id).any(1).all()
        ):
            break
    out = []
    for row in seqs[:, tokens.shape[1] :].tolist():
        if tok.eos_token_id is not None and tok.eos_token_id in row:
            row = row[: row.index(tok.eos_token_id)]
        out.append(tok.decode(row))
    return out


def _from_position(act: Tensor, first: int) -> Bool[Tensor, "batch seq"]:
    batch, seq = act.shape[:2]
    return (torch.arange(seq, device=act.device) >= first).expand(batch, seq)


def check_latents(sae: Any, latents: dict[int, float]) -> None:
    from saekit.errors import ConfigError

    bad = [i for i in latents if not 0 <= int(i) < sae.d_sae]
    if bad:
        raise ConfigError(
            f"latent(s) {bad} out of range: this SAE has d_sae={sae.d_sae} (ids 0..{sae.d_sae - 1})"
        )
