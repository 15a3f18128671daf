"""What a training process shows and logs outside the step: the progress bar, its postfix, and the repair
of metrics.jsonl on resume. Shared by the single-SAE trainer and the multi-SAE loop (`saekit.train.multi`).

    bar = progress_bar(cfg, trainer.step_count); bar.set_postfix(**postfix(summary))
    truncate_metrics(run.metrics_path, step)          # on resume: drop lines after the checkpoint
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tqdm.auto import tqdm

from saekit.config import TrainConfig
from saekit.io import atomic_write_text
from saekit.ranks import current_ranks
from saekit.rundir import METRICS_FILE

logger = logging.getLogger(__name__)


def progress_bar(cfg: TrainConfig, initial: int, desc: str = "train") -> tqdm:
    """A bar over the run's steps (rank 0 only under torchrun)."""
    return tqdm(
        total=cfg.total_steps,
        initial=initial,
        desc=desc,
        unit="step",
        disable=not cfg.progress or not current_ranks().is_main,
        dynamic_ncols=True,
    )


def postfix(summary: dict[str, float]) -> dict[str, str]:
    return {
        "fvu": f"{summary['fvu']:.3f}",
        "l0": f"{summary['l0']:.1f}",
        "dead": f"{summary['dead_fraction']:.2%}",
    }


def truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from, so metrics.jsonl has no duplicates, and
    any line that does not parse (a kill or a full disk mid-append leaves half a line)."""
    if not path.is_file():
        return
    kept, dropped = [], 0
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            dropped += bool(line.strip())
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(line)
    if dropped:
        logger.warning("%s: dropped %d unreadable line(s) (a write cut short)", METRICS_FILE, dropped)
    atomic_write_text(path, "".join(line + "\n" for line in kept))
