"""Dead-latent tracking in tokens (algorithms.md §1.4, §11.8): a latent is dead after `dead_tokens` training
tokens without firing. Counting tokens rather than steps keeps the threshold meaningful across batch sizes.

    tracker = DeadLatentTracker(d_sae, dead_tokens=10_000_000)
    tracker.update(step_out.fired, n_tokens=len(batch))
    dead = tracker.dead_mask()                     # feeds the next step's AuxK
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from saekit.errors import RunDirError


class DeadLatentTracker:
    """Per-latent count of tokens since the latent last fired (int64, starts at 0: nothing dead at first)."""

    def __init__(self, d_sae: int, dead_tokens: int, device: str | torch.device = "cpu") -> None:
        if dead_tokens <= 0:
            raise ValueError(f"dead_tokens must be positive, got {dead_tokens}")
        self.d_sae = d_sae
        self.dead_tokens = int(dead_tokens)
        self.tokens_since_fired: Int[Tensor, " d_sae"] = torch.zeros(d_sae, dtype=torch.long, device=device)

    @torch.no_grad()
    def update(self, fired: Bool[Tensor, " d_sae"], n_tokens: int) -> None:
        """Add `n_tokens` to every counter, then reset the latents that fired this step to 0.

        Under data parallelism pass the global token count of the step and call `all_reduce_()` after.
        """
        fired = fired.to(device=self.tokens_since_fired.device, dtype=torch.bool)
        assert fired.shape == (self.d_sae,), f"fired must be [{self.d_sae}], got {tuple(fired.shape)}"
        self.tokens_since_fired += int(n_tokens)
        self.tokens_since_fired.masked_fill_(fired, 0)

    def all_reduce_(self) -> None:
        """Element-wise MIN across ranks (alive on any rank = alive); a no-op without a process group."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.tokens_since_fired, op=torch.distributed.ReduceOp.MIN)

    def dead_mask(self) -> Bool[Tensor, " d_sae"]:
        return self.tokens_since_fired >= self.dead_tokens

    def dead_fraction(self) -> float:
        return self.dead_mask().float().mean().item()

    def state_dict(self) -> dict[str, Tensor]:
        return {"tokens_since_fired": self.tokens_since_fired.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        counts = state.get("tokens_since_fired")
        if counts is None or tuple(counts.shape) != (self.d_sae,):
            got = None if counts is None else tuple(counts.shape)
            raise RunDirError(
                f"dead-latent state must hold tokens_since_fired of shape ({self.d_sae},), got {got}; "
                "the checkpoint belongs to a different SAE width"
            )
        self.tokens_since_fired = counts.to(device=self.tokens_since_fired.device, dtype=torch.long).clone()
