"""Dead-latent tracking in tokens (algorithms.md §1.4, §11.8): a latent is dead after `dead_tokens` training
tokens without firing. Counting tokens rather than steps keeps the threshold meaningful across batch sizes.

    tracker = DeadLatentTracker(d_sae, dead_tokens=10_000_000)
    tracker.update(step_out.fired, n_tokens=len(batch), counts=step_out.fire_counts)
    dead = tracker.dead_mask()                     # feeds the next step's AuxK
    tracker.window_summary()                       # {"revived": …, "dense_fraction": …} since the last call

The log window (what `window_summary` reports on) is not part of checkpoints: after a resume it restarts.

Under torchrun every rank's tracker receives the step's global token count and global firing (the
training step's sync, `saekit.train.distributed.GradSync`), so the counters are identical on every rank
without a reduction of their own.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from saekit.errors import RunDirError

DENSE_FREQUENCY = 0.1
"""A latent counts as dense in a log window when it fires on more than this fraction of its tokens (the
same default as `saekit eval`'s dense_threshold)."""


class DeadLatentTracker:
    """Per-latent count of tokens since the latent last fired (int64, starts at 0: nothing dead at first),
    plus per-window statistics for the training log: revivals and firing counts."""

    def __init__(self, d_sae: int, dead_tokens: int, device: str | torch.device = "cpu") -> None:
        if dead_tokens <= 0:
            raise ValueError(f"dead_tokens must be positive, got {dead_tokens}")
        self.d_sae = d_sae
        self.dead_tokens = int(dead_tokens)
        self.tokens_since_fired: Int[Tensor, " d_sae"] = torch.zeros(d_sae, dtype=torch.long, device=device)
        self._reset_window()

    def _reset_window(self) -> None:
        device = self.tokens_since_fired.device
        self.window_tokens = 0
        self.window_counts: Int[Tensor, " d_sae"] | None = None
        self.window_fired = torch.zeros(self.d_sae, dtype=torch.bool, device=device)
        self.window_dead_at_start = torch.zeros(self.d_sae, dtype=torch.bool, device=device)

    @torch.no_grad()
    def update(
        self, fired: Bool[Tensor, " d_sae"], n_tokens: int, counts: Int[Tensor, " d_sae"] | None = None
    ) -> None:
        """Add `n_tokens` to every counter, then reset the latents that fired this step to 0. `counts`
        (rows each latent fired on, optional) accumulate into the log window's firing frequencies.

        Under data parallelism pass the global token count and firing of the step (what the step's sync
        returns), so every rank's counters stay identical.
        """
        fired = fired.to(device=self.tokens_since_fired.device, dtype=torch.bool)
        assert fired.shape == (self.d_sae,), f"fired must be [{self.d_sae}], got {tuple(fired.shape)}"
        if self.window_tokens == 0:
            self.window_dead_at_start = self.dead_mask()
        self.window_fired |= fired
        if counts is not None:
            counts = counts.to(device=fired.device, dtype=torch.long)
            self.window_counts = counts.clone() if self.window_counts is None else self.window_counts + counts
        self.window_tokens += int(n_tokens)
        self.tokens_since_fired += int(n_tokens)
        self.tokens_since_fired.masked_fill_(fired, 0)

    @torch.no_grad()
    def window_summary(self, dense_frequency: float = DENSE_FREQUENCY) -> dict[str, float]:
        """Since the previous call: `revived` (latents dead when the window began that fired in it) and,
        when counts were given, `dense_fraction` (share of latents firing on > dense_frequency of the
        window's tokens). Starts a new window."""
        summary = {"revived": float((self.window_dead_at_start & self.window_fired).sum().item())}
        if self.window_counts is not None and self.window_tokens > 0:
            frequency = self.window_counts.double() / self.window_tokens
            summary["dense_fraction"] = (frequency > dense_frequency).double().mean().item()
        self._reset_window()
        return summary

    @torch.no_grad()
    def permute_(self, perm: Int[Tensor, " d_sae"]) -> None:
        """Relabel latents (new latent p is old latent perm[p]): counters and window statistics move."""
        perm = perm.to(self.tokens_since_fired.device)
        self.tokens_since_fired = self.tokens_since_fired[perm]
        self.window_fired = self.window_fired[perm]
        self.window_dead_at_start = self.window_dead_at_start[perm]
        if self.window_counts is not None:
            self.window_counts = self.window_counts[perm]

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
