"""Each method's published claim, stated so a study can judge it: holds / does not hold, with seed spread.

A claim compares a method with the study's baseline (TopK) on one metric at common L0s (see `frontier`):
- "better": at every common L0 the method beats the baseline by more than the seed noise
  √(spread_method² + spread_baseline²) — an improvement inside the noise is not a demonstrated one;
- "no_worse": at every common L0 the method is behind by at most tolerance + noise;
- "no_dead": every run of the method has no dead latent on the evaluated cache rows.
A claim that cannot be read (baseline missing, no overlapping L0s) is "not tested", with the reason.

    verdicts = judge_claims(runs, baseline="topk", ks=(16, 32, 64))    # runs: study rows (dicts)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from saekit.study.frontier import Curve, common_l0s, seed_stat

HOLDS, FAILS, UNTESTED = "holds", "does not hold", "not tested"

LOWER_IS_BETTER = {"fvu": True, "ce_recovered": False, "ce_recovered_grad": False}
"""Study metrics a frontier claim can name, and their direction."""


@dataclass(frozen=True)
class Claim:
    methods: tuple[str, ...]
    """saekit method names (sae.method) the claim is about."""
    source: str
    text: str
    kind: Literal["better", "no_worse", "no_dead"]
    metric: str = "fvu"
    tolerance: float = 0.0
    """no_worse: how far behind the baseline still counts as no worse (relative to the baseline's value
    for FVU, absolute for CE recovered)."""
    baseline_metric: str | None = None
    """The baseline's metric compared with `metric` when it differs (g-SAE's gradient-selected CE against
    TopK's plain CE); None: the same metric."""


CLAIMS: tuple[Claim, ...] = (
    Claim(("batchtopk",), "Bussmann et al. 2024", "lower FVU than TopK at equal L0", "better", "fvu"),
    Claim(
        ("batchtopk",), "Bussmann et al. 2024", "higher CE recovered than TopK at equal L0", "better",
        "ce_recovered",
    ),
    Claim(("mutual_choice",), "Ayonrinde 2024", "lower FVU than TopK at equal L0", "better", "fvu"),
    Claim(("feature_choice",), "Ayonrinde 2024", "lower FVU than TopK at equal L0", "better", "fvu"),
    Claim(("feature_choice",), "Ayonrinde 2024", "no dead latents", "no_dead"),
    Claim(
        ("matryoshka",), "Bussmann et al. 2025", "CE recovered within 0.005 of TopK at equal L0", "no_worse",
        "ce_recovered", 0.005,
    ),
    Claim(
        ("hierarchical_topk",), "Balagansky et al. 2025", "FVU no worse than TopK (1 %) at equal L0",
        "no_worse", "fvu", 0.01,
    ),
    Claim(
        ("gsae",), "Olmo et al. 2025", "higher CE recovered than TopK at equal L0 (plain selection)",
        "better", "ce_recovered",
    ),
    Claim(
        ("gsae",), "Olmo et al. 2025", "higher CE recovered than TopK at equal L0 (gradient selection)",
        "better", "ce_recovered_grad", baseline_metric="ce_recovered",
    ),
    Claim(("mp",), "Costa et al. 2025", "lower FVU than TopK at equal L0", "better", "fvu"),
    Claim(
        ("jumprelu",), "Rajamanoharan et al. 2024", "FVU no worse than TopK (2 %) at equal L0", "no_worse",
        "fvu", 0.02,
    ),
)  # fmt: skip


def claims_for(sae_method: str) -> list[Claim]:
    return [c for c in CLAIMS if sae_method in c.methods]


def seed_curves(runs: Sequence[dict[str, Any]], name: str, metric: str) -> list[Curve]:
    """One curve per seed of study method `name`: (held-out L0, metric) over its ks."""
    seeds = sorted({r["seed"] for r in runs if r["method"] == name})
    return [
        Curve.from_points(
            (r.get("l0"), r.get(metric)) for r in runs if r["method"] == name and r["seed"] == s
        )
        for s in seeds
    ]


def judge_frontier(
    claim: Claim,
    runs: Sequence[dict[str, Any]],
    name: str,
    baseline: str,
    ks: Sequence[int],
    l0s: Sequence[float],
) -> dict[str, Any]:
    """Verdict of a better / no_worse claim, with the per-L0 numbers behind it."""
    mine = seed_curves(runs, name, claim.metric)
    base = seed_curves(runs, baseline, claim.baseline_metric or claim.metric)
    if not base or not any(c.l0 for c in base):
        return {"verdict": UNTESTED, "reason": f"no finished {baseline} runs to compare with"}
    points = common_l0s([*mine, *base], ks, l0s)
    if not points:
        return {"verdict": UNTESTED, "reason": f"the L0 ranges of {name} and {baseline} do not overlap"}
    lower = LOWER_IS_BETTER[claim.metric]
    rows, ok = [], []
    for l0 in points:
        m, b = seed_stat(c.at(l0) for c in mine), seed_stat(c.at(l0) for c in base)
        assert m is not None and b is not None  # every curve spans every common L0
        gain = (b.mean - m.mean) if lower else (m.mean - b.mean)
        noise = math.hypot(m.spread, b.spread)
        if claim.kind == "better":
            ok.append(gain > noise)
        else:
            allowed = claim.tolerance * abs(b.mean) if claim.metric == "fvu" else claim.tolerance
            ok.append(gain >= -(allowed + noise))
        rows.append({"l0": l0, "method": m.as_dict(), "baseline": b.as_dict(), "gain": gain, "noise": noise})
    return {"verdict": HOLDS if all(ok) else FAILS, "points": rows}


def judge_no_dead(runs: Sequence[dict[str, Any]], name: str) -> dict[str, Any]:
    dead = [r.get("dead") for r in runs if r["method"] == name]
    if not dead or any(d is None for d in dead):
        return {"verdict": UNTESTED, "reason": "no dead-latent fraction recorded"}
    stat = seed_stat(dead)
    assert stat is not None
    return {"verdict": HOLDS if max(dead) == 0 else FAILS, "dead": stat.as_dict(), "max_dead": max(dead)}


def judge_claims(
    runs: Sequence[dict[str, Any]], *, baseline: str, ks: Sequence[int], l0s: Sequence[float] = ()
) -> list[dict[str, Any]]:
    """Every registered claim of every study method (by its sae_method), judged on the finished runs."""
    out: list[dict[str, Any]] = []
    methods = dict.fromkeys((r["method"], r["sae_method"]) for r in runs)
    for name, sae_method in methods:
        if name == baseline:
            continue
        for claim in claims_for(sae_method):
            if claim.kind == "no_dead":
                result = judge_no_dead(runs, name)
            else:
                result = judge_frontier(claim, runs, name, baseline, ks, l0s)
            head = {"method": name, "source": claim.source, "claim": claim.text, "kind": claim.kind}
            out.append({**head, "metric": claim.metric, "baseline": baseline, **result})
    return out
