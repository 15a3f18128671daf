"""A method is one declared object: its config section, encode rule, training objective and evaluation report.

Each built-in method module in `saekit.sae.methods` ends with one `register_method(Method(...))`. The trainer,
the evaluator, `compare` and the app ask the declaration; none of them branches on a method's name.

    method = get_method("matryoshka")
    params = method.params(k=32)                     # the method's own frozen config section
    activation, objective = method.activation(params), method.objective(params)   # objective: per run
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from saekit.errors import ConfigError

if TYPE_CHECKING:
    from torch import Tensor

    from saekit.sae.activations import Activation
    from saekit.sae.model import Sae
    from saekit.sae.objective import Objective


@dataclass(frozen=True)
class LevelReport:
    """How evaluation reports a nested method: one FVU/L0 per level (prefix width or k)."""

    kind: str
    """What a level is, e.g. "prefix" (Matryoshka widths) or "k" (budgets); also the eval.json axis name."""
    levels: Callable[[Sae], list[int]]
    """The levels to report for a trained SAE."""
    reconstruct: Callable[[Sae, Tensor, list[int]], tuple[Tensor, Tensor]]
    """(normalised x [B, d]) → (x̂ per level [B, L, d], summed active latents per level [L]), inference."""
    definition: str
    """One sentence saved in eval.json saying what x̂ and L0 are at a level."""


@dataclass(frozen=True)
class Method:
    """Everything saekit knows about one SAE method, declared once."""

    name: str
    """Registry name, as written in `sae.method`."""
    params: type
    """Frozen dataclass of the method's own config keys (its section under `sae.`)."""
    activation: Callable[[Any], Activation]
    """params → the encode rule (a fresh object per SAE)."""
    objective: Callable[[Any], Objective]
    """params → the training objective (a fresh object per run, holding any state it needs)."""
    summary: str
    """One line for `saekit train --help` and the app."""
    l0_param: str | None = "k"
    """The param that sets the mean number of active latents (compare trains methods at equal L0)."""
    levels: LevelReport | None = None
    """Per-level evaluation for nested methods."""
    selection_modes: tuple[str, ...] = ()
    """Extra inference selection modes evaluation reports besides the plain one (e.g. "grad" for g-SAE)."""
    needs_grads: bool = False
    """Training batches must carry dL/dx (collect with capture_grads=true)."""


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add a method to the registry (its name must be new)."""
    if method.name in METHODS and METHODS[method.name] is not method:
        raise ValueError(f"method {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The registered method `name`; unknown names raise ConfigError with close matches."""
    if name not in METHODS:
        close = difflib.get_close_matches(str(name), METHODS, n=3)
        hint = f"did you mean {', '.join(map(repr, close))}?" if close else f"choose from {sorted(METHODS)}"
        raise ConfigError(f"sae.method: unknown method {name!r}; {hint}")
    return METHODS[name]
