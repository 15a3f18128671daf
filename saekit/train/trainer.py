"""The training loop: one SAE, its method's objective, Adam with the unit-norm decoder, exact resume.

`fit` only calls `step`, `log`, `maybe_checkpoint`; `step` is `training_step` (the one step function);
everything method-specific lives in the method's activation and objective (`saekit.sae.methods`), so the
trainer never branches on method names. Run-directory paths come from `saekit.rundir`.

    run_dir = train(load_config(TrainConfig, "configs/topk.yaml"))
    run_dir = train(cfg, resume=True)      # continues from the newest checkpoint, bit-for-bit on CPU
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from saekit.config import TrainConfig, save_config
from saekit.errors import DataError, RunDirError
from saekit.io import atomic_write_text
from saekit.rundir import SAE_SUBDIR, RunDir
from saekit.sae import (
    Sae,
    estimate_act_scale,
    init_sae_from_data_,
    load_sae,
    make_objective,
    mse_scale_from_sample,
)
from saekit.train.checkpoint import load_trainer_state, rng_state, save_checkpoint, save_final, set_rng_state
from saekit.train.dead import DeadLatentTracker
from saekit.train.sources import TrainingSource, open_training_source
from saekit.train.step import make_optimizer, training_step

logger = logging.getLogger(__name__)


def train(cfg: TrainConfig, *, resume: bool = False) -> Path:
    """Train an SAE as configured; returns the run directory (with final/ and metrics.jsonl)."""
    run = RunDir(cfg.run_dir)
    _check_run_dir(run, resume)
    torch.manual_seed(cfg.seed)
    source = open_training_source(cfg)
    # On resume the checkpoint supplies weights, act_scale and mse_scale: skip the data initialisation.
    trainer = Trainer.create(cfg, source, run.path, init_from_data=not resume)
    if resume:
        trainer.restore(run.latest_checkpoint())
    else:
        run.path.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run.config_path)
    trainer.fit()
    trainer.sae.normalize_decoder_rows_()  # the last step leaves rows only approximately unit norm
    save_final(run, trainer.sae, trainer.final_state())
    logger.info("training done: %s", run.final_dir)
    return run.path


class Trainer:
    def __init__(self, cfg: TrainConfig, source: TrainingSource, sae: Sae, mse_scale: float, run_dir: Path):
        self.cfg, self.source, self.sae = cfg, source, sae
        self.run = RunDir(run_dir)
        self.mse_scale = mse_scale
        self.objective = make_objective(cfg.sae)  # this run's own object: its state is plain attributes
        self.lr = cfg.resolve_lr(sae.d_sae)
        self.optimizer = make_optimizer(sae, lr=self.lr, betas=cfg.adam_betas, eps=cfg.adam_eps)
        self.tracker = DeadLatentTracker(sae.d_sae, cfg.sae.dead_tokens)
        self.step_count, self.tokens = 0, 0
        self._window: list[dict[str, float]] = []
        self._window_start = time.perf_counter()

    @classmethod
    def create(
        cls, cfg: TrainConfig, source: TrainingSource, run_dir: Path, *, init_from_data: bool = True
    ) -> Trainer:
        """Build an SAE and initialise it from the source's sample (scale, b_dec, tied encoder); with
        `init_from_data=False` (resume) the weights and scales are left for `restore` to load."""
        sample = source.sample.to(cfg.device) if init_from_data else None
        scale = estimate_act_scale(sample, cfg.sae.normalize_activations) if init_from_data else 1.0
        sae = Sae(
            source.d_in,
            cfg.sae,
            act_scale=scale,
            hookpoint=source.hookpoint,
            model_id=source.model_id,
            extra_cfg={"source": source.description},
        ).to(cfg.device)
        if not init_from_data:
            return cls(cfg, source, sae, 1.0, run_dir)
        scaled = sae.scale_input(sample)
        init_sae_from_data_(sae, scaled)
        mse_scale = mse_scale_from_sample(scaled)  # fixed FVU denominator (Gao et al. train.py)
        logger.info(
            "SAE %s %s: d_in=%d d_sae=%d act_scale=%.4g lr=%.3g",
            cfg.sae.method,
            sae.activation.params_summary(),
            sae.d_in,
            sae.d_sae,
            scale,
            cfg.resolve_lr(sae.d_sae),
        )
        return cls(cfg, source, sae, mse_scale, run_dir)

    # ------------------------------------------------------------------------------------------ loop

    def fit(self) -> None:
        total = self.cfg.total_steps
        bar = tqdm(
            total=total,
            initial=self.step_count,
            desc="train",
            unit="step",
            disable=not self.cfg.progress,
            dynamic_ncols=True,
        )
        while self.step_count < total:
            batch = self.source.next_batch().to(self.cfg.device)
            record = self.step(batch)
            self._window.append(record)
            bar.update(1)
            if self.step_count % self.cfg.log_every == 0 or self.step_count == total:
                summary = self.log()
                bar.set_postfix(
                    fvu=f"{summary['fvu']:.3f}",
                    l0=f"{summary['l0']:.1f}",
                    dead=f"{summary['dead_fraction']:.2%}",
                )
            self.maybe_checkpoint()
        bar.close()

    def step(self, batch) -> dict[str, float]:
        try:
            out = training_step(
                self.sae,
                self.objective,
                self.optimizer,
                batch,
                mse_scale=self.mse_scale,
                tracker=self.tracker,
            )
        except DataError as err:
            raise DataError(f"step {self.step_count}: {err}") from None
        self.step_count += 1
        self.tokens += len(batch)
        return {"loss": float(out.loss.detach()), **out.losses, **out.metrics}

    def log(self) -> dict[str, float]:
        elapsed = time.perf_counter() - self._window_start
        keys = self._window[0].keys()
        summary = {key: sum(r[key] for r in self._window) / len(self._window) for key in keys}
        summary.update(
            step=self.step_count,
            tokens=self.tokens,
            lr=self.lr,
            dead_fraction=self.tracker.dead_fraction(),
            **self.tracker.window_summary(),
            tokens_per_s=len(self._window) * self.cfg.batch_size / max(elapsed, 1e-9),
        )
        with open(self.run.metrics_path, "a") as fh:
            fh.write(json.dumps(summary) + "\n")
        self._window, self._window_start = [], time.perf_counter()
        return summary

    def maybe_checkpoint(self) -> None:
        if self.step_count % self.cfg.checkpoint_every == 0 and self.step_count < self.cfg.total_steps:
            self.save_checkpoint()

    # ------------------------------------------------------------------------------- checkpointing

    def final_state(self) -> dict[str, Any]:
        """What readers of a finished run need besides the weights: counters and dead-latent state."""
        return {
            "step": self.step_count,
            "tokens": self.tokens,
            "dead_tracker": _tensors_to_lists(self.tracker.state_dict()),
        }

    def save_checkpoint(self) -> Path:
        state = {
            "step": self.step_count,
            "tokens": self.tokens,
            "mse_scale": self.mse_scale,
            "rng": rng_state(),
            "reader": self.source.state_dict(),
            "dead_tracker": _tensors_to_lists(self.tracker.state_dict()),
        }
        objective_state = self.objective.state_dict()  # e.g. aux_zipf frequency EMAs (plain JSON, exact)
        if objective_state:
            state["objective"] = objective_state
        path = save_checkpoint(self.run, self.step_count, self.sae, self.optimizer, state)
        logger.debug("checkpoint %s", path)
        return path

    def restore(self, step_dir: Path | None) -> None:
        if step_dir is None:
            raise RunDirError(
                f"--resume: {self.run.checkpoints_dir} has no checkpoint; start without --resume"
            )
        saved = load_sae(
            step_dir / SAE_SUBDIR, device=self.cfg.device, v1_objective=self.run.format1_objective()
        )
        if saved.d_in != self.sae.d_in or saved.d_sae != self.sae.d_sae:
            raise DataError(
                f"--resume: checkpoint has d_in={saved.d_in}, d_sae={saved.d_sae} but the data "
                f"gives d_in={self.sae.d_in}, d_sae={self.sae.d_sae}; use the cache it was trained on"
            )
        self.sae.load_state_dict(saved.state_dict())
        self.sae.act_scale = saved.act_scale
        state = load_trainer_state(step_dir, self.optimizer)
        self.step_count, self.tokens, self.mse_scale = state["step"], state["tokens"], state["mse_scale"]
        set_rng_state(state["rng"])
        self.source.load_state_dict(state["reader"])
        self.tracker.load_state_dict(_lists_to_tensors(state["dead_tracker"]))
        if "objective" in state:
            self.objective.load_state_dict(state["objective"], self.sae)
        _truncate_metrics(self.run.metrics_path, self.step_count)
        logger.info("resumed from %s (step %d, %d tokens)", step_dir, self.step_count, self.tokens)


def _check_run_dir(run: RunDir, resume: bool) -> None:
    if resume:
        if not run.config_path.is_file():
            raise RunDirError(
                f"--resume: {run.path} is not a run directory (no config.yaml); start a new run without "
                "--resume"
            )
    elif run.has_training():
        raise RunDirError(
            f"{run.path} already holds a run; pass --resume to continue it, or choose another "
            f"run_dir=... (nothing was overwritten)"
        )


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from, so metrics.jsonl has no duplicates."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def _tensors_to_lists(state: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in state.items()}


def _lists_to_tensors(state: dict[str, Any]) -> dict[str, Any]:
    return {k: (torch.tensor(v) if isinstance(v, list) else v) for k, v in state.items()}
