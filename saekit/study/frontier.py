"""Pareto frontiers of a study: one curve (L0 → metric) per method and seed, read at common L0s.

Each (method, seed) run of the sweep over k gives points (achieved held-out L0, metric). Threshold methods
miss their target L0, so runs are compared by interpolating every curve at shared L0s — linearly in
log L0, never extrapolated — and summarised over seeds as mean ± spread (half the range over seeds).

    curve = Curve.from_points([(16.4, 0.21), (33.0, 0.16), (65.1, 0.12)])
    points = common_l0s([curve_a, curve_b], ks=(16, 32, 64))       # L0s inside every curve
    stat = seed_stat([curve_s0.at(32.0), curve_s1.at(32.0)])       # SeedStat(mean, spread, n)
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Curve:
    """A metric as a function of L0, from the runs of one method and seed (sorted by L0)."""

    l0: tuple[float, ...]
    value: tuple[float, ...]

    @classmethod
    def from_points(cls, points: Iterable[tuple[float | None, float | None]]) -> Curve:
        """Drop points with a missing or non-positive L0 or a missing value; sort by L0."""
        kept = sorted(
            (float(a), float(b))
            for a, b in points
            if a is not None and b is not None and a > 0 and math.isfinite(a) and math.isfinite(b)
        )
        return cls(tuple(p[0] for p in kept), tuple(p[1] for p in kept))

    @property
    def span(self) -> tuple[float, float] | None:
        return (self.l0[0], self.l0[-1]) if self.l0 else None

    def at(self, l0: float) -> float | None:
        """Linear interpolation in log L0; None outside [min L0, max L0] (no extrapolation)."""
        if not self.l0 or l0 < self.l0[0] or l0 > self.l0[-1]:
            return None
        i = bisect_left(self.l0, l0)
        if self.l0[i] == l0:
            return self.value[i]
        lo, hi = self.l0[i - 1], self.l0[i]
        t = (math.log(l0) - math.log(lo)) / (math.log(hi) - math.log(lo))
        return self.value[i - 1] + t * (self.value[i] - self.value[i - 1])


def common_l0s(curves: Sequence[Curve], ks: Sequence[int], requested: Sequence[float] = ()) -> list[float]:
    """L0s at which every curve can be read: `requested` if given (those inside every curve), else the
    target ks inside the overlap; when fewer than two ks fit, three points spread geometrically over the
    overlap. Empty when the curves do not overlap."""
    spans = [c.span for c in curves if c.span is not None]
    if not spans or len(spans) < len(curves):
        return []
    lo, hi = max(s[0] for s in spans), min(s[1] for s in spans)
    if lo > hi:
        return []
    if requested:
        return [float(p) for p in sorted(requested) if lo <= p <= hi]
    inside = [float(k) for k in sorted(ks) if lo <= k <= hi]
    if len(inside) >= 2 or lo == hi:
        return inside or [lo]
    return [lo * (hi / lo) ** (i / 2) for i in range(3)]


@dataclass(frozen=True)
class SeedStat:
    """One metric at one L0 over seeds."""

    mean: float
    spread: float
    """Half the range over seeds (0 for one seed)."""
    n: int

    def as_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "spread": self.spread, "n": self.n}


def seed_stat(values: Iterable[float | None]) -> SeedStat | None:
    """Mean and half-range of the non-missing values; None when all are missing."""
    kept = [v for v in values if v is not None]
    if not kept:
        return None
    return SeedStat(sum(kept) / len(kept), (max(kept) - min(kept)) / 2, len(kept))
