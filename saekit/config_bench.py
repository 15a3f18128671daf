"""The `saekit bench` config (kept out of config.py, which is at its size limit): which step, widths, k and
modes to time. `saekit bench --help` lists these keys.

    cfg = load_config(BenchConfig, None, ["d_sae=16384", "reps=3"])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from saekit.config_checks import require_positive
from saekit.config_io import require
from saekit.sae.method import get_method


@dataclass(frozen=True)
class BenchConfig:
    """What `saekit bench` does: time the training step against one encoder GEMM, per width and k."""

    d_in: int = 768
    """Input width."""
    d_sae: tuple[int, ...] = (16384, 32768)
    """Dictionary widths to time (comma-separated on the command line)."""
    k: tuple[int, ...] = (32, 64, 128)
    """Active latents per token to time (the method's L0 key)."""
    dead: tuple[float, ...] = (0.5,)
    """AuxK dead fractions timed besides the 1 % of the `+auxk` column."""
    others: tuple[str, ...] = ("batchtopk",)
    """Other methods whose plain step (no AuxK) is timed in the same rounds."""
    encode_path: Literal["auto", "dense", "fused"] = "auto"
    """Encoder path of the steps (auto: measured once per machine and shape, cached; SAEKIT_ENCODE_PATH)."""
    collection: bool = False
    """Also time `collect` against a bare forward of the embedded model (with and without gradients)."""
    device: str = "cpu"
    """cpu: the step table; cuda: Triton kernels vs their torch twins, and the step vs a bf16 GEMM."""
    batch: int = 4096
    """Rows per step."""
    reps: int = 5
    """Interleaved repetitions; medians are reported."""
    memory: bool = True
    """Also measure peak memory per variant in fresh subprocesses."""
    dense: bool = True
    """Also time a dense-autograd reference step."""
    threads: int = 2
    """torch threads."""
    bf16: bool = False
    """saekit's encoder GEMM in bf16 (sae.encoder_bf16); ratios stay relative to the fp32 GEMM."""
    method: str = "topk"
    """saekit method whose training step is timed."""
    mode: Literal["step", "streams", "ranks", "index"] = "step"
    """step: the training step against one GEMM; streams: N SAEs from one cache stream vs N separate runs
    (uses the first d_sae and k, and `saes`, `tokens`); ranks: training tokens/s of 1 process vs torchrun
    with 2..`ranks` ranks (first d_sae and k, `tokens`, `batch`); index: `saekit index` of `run` with and
    without output scores, and its scan against a bare forward, per number of `sequences`."""
    saes: int = 4
    """mode=streams: number of SAEs trained from one stream (and as separate runs)."""
    tokens: int = 32_768
    """mode=streams and mode=ranks: rows of the synthetic cache; every run trains one epoch over it."""
    ranks: int = 2
    """mode=ranks: the largest number of torchrun ranks timed against one process."""
    run: str = "runs/demo/topk"
    """mode=index: a trained run (its final checkpoint is indexed into a scratch copy; its index is kept)."""
    sequences: tuple[int, ...] = (64, 256)
    """mode=index: numbers of held-out sequences indexed."""

    def __post_init__(self) -> None:
        require_positive(self, "d_in", "batch", "reps", "threads")
        require(
            len(self.d_sae) > 0 and all(d > 0 for d in self.d_sae), "d_sae", "give widths > 0, e.g. 4096,8192"
        )
        require(len(self.k) > 0 and all(k > 0 for k in self.k), "k", "give values > 0, e.g. 32,64")
        get_method(self.method)  # an unknown method fails here, with close matches
        require_positive(self, "saes", "tokens", "ranks")
        counts_ok = len(self.sequences) > 0 and min(self.sequences) > 0
        require(counts_ok, "sequences", "give counts > 0, e.g. 64,256")
        for other in self.others:
            get_method(other)
        require(all(0 < f < 1 for f in self.dead), "dead", "give fractions in (0, 1), e.g. 0.01,0.5")
        require(self.device in ("cpu", "cuda"), "device", "choose cpu or cuda")
