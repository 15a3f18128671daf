"""The ranks of a `torchrun` job: joining the process group, sharing work, and agreeing on failures.

A process started by `torchrun --nproc-per-node N` (N > 1: WORLD_SIZE, RANK and LOCAL_RANK in its environment)
joins one process group on the first `join_ranks`: gloo on CPU, nccl on CUDA (each rank then uses GPU
LOCAL_RANK). Any other process gets the single-rank `Ranks()` and never initialises torch.distributed, so
plain `saekit train` needs nothing of it.

    ranks = join_ranks(cfg.device)           # Ranks(rank=0, world_size=1) outside torchrun
    lo, hi = ranks.share(len(items))         # this rank's contiguous part of n items
    if ranks.is_main: write_the_manifest()   # rank 0 writes shared files
    with ranks.lead(): checks_and_lock()     # rank 0 only; its error (or "go") reaches every rank
    ranks.follow()                           # the other ranks: wait for rank 0's verdict

A rank that raises after the start phase simply exits; `torchrun` then stops the other ranks and the job
fails (every shared file is written atomically by rank 0, so nothing half-written is left behind).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from saekit.errors import SaekitError

logger = logging.getLogger(__name__)


class RankFailed(SaekitError):
    """Rank 0 refused to start (its one-line error is repeated on the other ranks)."""


class RankLost(SaekitError):
    """A collective failed because another rank stopped (killed, or failed with its own error)."""


@contextlib.contextmanager
def _collective(what: str) -> Iterator[None]:
    try:
        yield
    except RuntimeError as err:  # gloo and nccl report a vanished peer as a RuntimeError (DistBackendError)
        detail = " ".join(str(err).split())[:200]
        raise RankLost(
            f"{what} across ranks failed: another rank stopped ({detail}); its own error is above. Shards "
            "and checkpoints already written are complete: re-run the same command (training: with --resume)"
        ) from None


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job; `world_size == 1` means no process group at all."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def share(self, n: int) -> tuple[int, int]:
        """[lo, hi) of this rank's contiguous part of n items (parts differ in size by at most one)."""
        return n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size

    def collective_device(self) -> torch.device:
        """Where tensors for collectives must live: the rank's GPU under nccl, else the CPU."""
        if self.distributed and torch.distributed.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def barrier(self) -> None:
        if self.distributed:
            with _collective("waiting"):
                torch.distributed.barrier()

    def all_reduce_sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over ranks in place (moved to the collective device and back when needed)."""
        if not self.distributed:
            return tensor
        device = self.collective_device()
        work = tensor if tensor.device == device else tensor.to(device)
        with _collective("a sum"):
            torch.distributed.all_reduce(work)
        if work is not tensor:
            tensor.copy_(work)
        return tensor

    def broadcast_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Overwrite `tensor` with rank 0's values on every rank."""
        if not self.distributed:
            return tensor
        device = self.collective_device()
        work = tensor.detach() if tensor.device == device else tensor.detach().to(device)
        with _collective("a broadcast"):
            torch.distributed.broadcast(work, src=0)
        if work.data_ptr() != tensor.data_ptr():
            with torch.no_grad():
                tensor.copy_(work)
        return tensor

    @contextlib.contextmanager
    def lead(self) -> Iterator[None]:
        """Rank 0: run the block, then tell the other ranks (waiting in `follow`) how it ended, so a refusal
        (a run directory in use, a bad resume) is one clean error on every rank instead of a hang."""
        try:
            yield
        except BaseException as err:
            self._announce(_describe(err))
            raise
        self._announce(None)

    def follow(self) -> None:
        """Other ranks: wait for the end of rank 0's `lead` block; raise its error here too."""
        message = self._announce(None)
        if message is not None:
            raise RankFailed(f"rank 0 stopped: {message}")

    def from_main(self, value: Any) -> Any:
        """Rank 0's `value` (any picklable object) on every rank."""
        if not self.distributed:
            return value
        box = [value]
        with _collective("waiting for rank 0"):
            torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def _announce(self, message: str | None) -> str | None:
        return self.from_main(message)


def _describe(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if isinstance(err, SaekitError) else f"{type(err).__name__}: {text}"


_CURRENT = Ranks()


def current_ranks() -> Ranks:
    """The ranks `join_ranks` set up in this process (single rank before, or outside torchrun)."""
    return _CURRENT


def join_ranks(device: str = "cpu") -> Ranks:
    """Join the torchrun job this process belongs to (once; later calls return the same Ranks).

    Outside torchrun, or with one process, nothing is initialised. `device` picks the backend: nccl when
    it is a CUDA device (each rank binds GPU LOCAL_RANK, so `device: cuda` means "this rank's GPU"), gloo
    otherwise.
    """
    global _CURRENT
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or _CURRENT.distributed:
        return _CURRENT
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = str(device).startswith("cuda")
    if cuda:
        torch.cuda.set_device(local)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
        atexit.register(_leave)
    _CURRENT = Ranks(rank=rank, world_size=world, local_rank=local)
    if rank != 0:  # rank 0 reports progress for the job; the others speak up only about problems
        logging.getLogger("saekit").setLevel(logging.WARNING)
    logger.info("rank %d of %d (%s)", rank, world, torch.distributed.get_backend())
    return _CURRENT


def _leave() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
