"""The training loop: one SAE, its method's objective, Adam with the unit-norm decoder, exact resume.

`fit` feeds each batch to `advance` (step, then `log` and `maybe_checkpoint` when due); `step` is
`training_step` (the one step function) at the scheduled lr (`saekit.train.schedule`);
everything method-specific lives in the method's activation and objective (`saekit.sae.methods`), so the
trainer never branches on method names. Run-directory paths come from `saekit.rundir`.

    run_dir = train(load_config(TrainConfig, "configs/topk.yaml"))
    run_dir = train(cfg, resume=True)      # continues from the newest checkpoint, bit-for-bit on CPU

A config with `saes:` or `sweep:` trains several SAEs from one stream (`saekit.train.multi`); each member is
a `Trainer` fed by the group's loop. Hooks for multi-process runs: `_summary` (the numbers of one log
window, to reduce across ranks) and `_write_metrics` / `save_checkpoint` / `save_final` (the writes).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from saekit.config import TrainConfig, save_config, to_dict
from saekit.config_checks import require_device
from saekit.errors import DataError, RunDirError, SaekitError
from saekit.ranks import current_ranks, join_ranks
from saekit.rundir import SAE_SUBDIR, TRAINER_STATE_FILE, RunDir, absolute_paths
from saekit.sae import (
    Sae,
    estimate_act_scale,
    init_sae_from_data_,
    load_sae,
    make_objective,
    mse_scale_from_sample,
)
from saekit.train.checkpoint import (
    corrupt_checkpoint,
    load_trainer_state,
    rng_state,
    save_checkpoint,
    save_final,
    set_rng_state,
    write_errors,
)
from saekit.train.dead import DeadLatentTracker
from saekit.train.distributed import (
    GradSync,
    check_world_size,
    mean_over_ranks,
    require_single_rank,
    share_initial_state,
    world_size_state,
)
from saekit.train.progress import postfix, progress_bar, truncate_metrics
from saekit.train.resume import check_resume, record_resume
from saekit.train.schedule import LrSchedule
from saekit.train.sources import TrainingSource, open_training_source
from saekit.train.start import RunClaim, check_new_run, clear_interrupted_start
from saekit.train.step import Diverged, check_finite_, make_optimizer, training_step
from saekit.train.tracking import Trackers, open_trackers, require_trackers

logger = logging.getLogger(__name__)


def train(cfg: TrainConfig, *, resume: bool = False) -> Path:
    """Train an SAE as configured; returns the run directory (with final/ and metrics.jsonl).

    Refusals (a run dir that is not ours, a resume that contradicts the run, another writer) raise
    RunDirError before anything is written. A start that fails before its first checkpoint removes what it
    created; later failures keep the checkpoints for `--resume`. Paths are stored absolute.
    """
    require_device(cfg.device, "device")  # before any file is written
    if cfg.live is not None:
        require_device(cfg.live.device, "live.device")
    require_trackers(cfg.log)
    ranks = join_ranks(cfg.device)  # under torchrun: rank 0 owns the run directory, the others follow it
    if cfg.members:
        require_single_rank(ranks, "several SAEs from one stream (saes: / sweep:)")
        from saekit.train.multi import train_group

        return train_group(cfg, resume=resume)
    cfg = absolute_paths(cfg)
    run = RunDir(cfg.run_dir)
    if not ranks.is_main:
        return _follow(cfg, run, resume=resume)
    with ranks.lead():  # a refusal reaches the other ranks as the same one-line error
        if resume:
            check_resume(run, cfg)
        else:
            check_new_run(run)
    with RunClaim(run, ranks) as claim:
        run.remove_stale_staging()
        if resume:
            _resume(cfg, run)
        else:
            try:
                _start(cfg, claim)
            except BaseException:
                if run.latest_checkpoint() is None:  # nothing resumable: leave nothing behind
                    claim.undo()
                raise
    logger.info("training done: %s", run.final_dir)
    return run.path


def _start(cfg: TrainConfig, claim: RunClaim) -> None:
    run = claim.run
    check_new_run(run)  # again, now that we hold the lock
    clear_interrupted_start(claim)
    torch.manual_seed(cfg.seed)
    source = open_training_source(cfg)
    trainer = Trainer.create(cfg, source, run.path)
    with write_errors(run.config_path, run):
        save_config(cfg, run.config_path)
    _fit_and_save(trainer, resume=False)


def _resume(cfg: TrainConfig, run: RunDir) -> None:
    changes = check_resume(run, cfg)  # again, now that we hold the lock
    torch.manual_seed(cfg.seed)
    source = open_training_source(cfg)
    # The checkpoint supplies weights, act_scale and mse_scale: skip the data initialisation.
    trainer = Trainer.create(cfg, source, run.path, init_from_data=False)
    step_dir = run.latest_checkpoint()
    trainer.restore(step_dir)
    record_resume(run, cfg, changes, step_dir, trainer.step_count)
    _fit_and_save(trainer, resume=True)


def _follow(cfg: TrainConfig, run: RunDir, *, resume: bool) -> Path:
    """Ranks other than 0 (saekit.train.distributed): once rank 0 holds the run directory, the same
    training without any write (rank 0 writes the log, checkpoints and final/ for all)."""
    ranks = current_ranks()
    ranks.follow()  # rank 0's checks
    ranks.follow()  # rank 0's lock
    torch.manual_seed(cfg.seed)
    trainer = Trainer.create(cfg, open_training_source(cfg), run.path, init_from_data=not resume)
    if resume:
        trainer.restore(run.latest_checkpoint())
    trainer.fit()
    return run.path


def _fit_and_save(trainer: Trainer, *, resume: bool) -> None:
    trainer.open_trackers(resume=resume)
    try:
        trainer.fit()
    finally:
        trainer.trackers.close()
    trainer.finish()


class Trainer:
    def __init__(self, cfg: TrainConfig, source: TrainingSource, sae: Sae, mse_scale: float, run_dir: Path):
        self.cfg, self.source, self.sae = cfg, source, sae
        self.run = RunDir(run_dir)
        self.mse_scale = mse_scale
        self.objective = make_objective(cfg.sae)  # this run's own object: its state is plain attributes
        self.lr = cfg.resolve_lr(sae.d_sae)
        self.optimizer = make_optimizer(sae, lr=self.lr, betas=cfg.adam_betas, eps=cfg.adam_eps)
        self.schedule = LrSchedule(cfg.schedule, cfg.total_steps)
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.current_lr = self.lr
        self.trackers = Trackers([])
        self.sparsity_coef: float | None = None
        self.tracker = DeadLatentTracker(sae.d_sae, cfg.sae.dead_tokens)
        self.ranks = current_ranks()
        self.sync = GradSync(self.ranks) if self.ranks.distributed else None
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
        mse_scale = share_initial_state(current_ranks(), sae, mse_scale)  # rank 0's, under torchrun
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
        bar = progress_bar(self.cfg, self.step_count)
        while self.step_count < self.cfg.total_steps:
            summary = self.advance(self.source.next_batch().to(self.cfg.device))
            bar.update(1)
            if summary is not None:
                bar.set_postfix(**postfix(summary))
        bar.close()

    def advance(self, batch) -> dict[str, float] | None:
        """One step on `batch`, then the log line and the checkpoint when due; returns the logged summary."""
        self._window.append(self.step(batch))
        summary = None
        if self.step_count % self.cfg.log_every == 0 or self.step_count == self.cfg.total_steps:
            summary = self.log()
        self.maybe_checkpoint()
        return summary

    def finish(self) -> None:
        """Renormalise the decoder, check, and write final/."""
        self.sae.normalize_decoder_rows_()  # the last step leaves rows only approximately unit norm
        self.check_finite_parameters()
        save_final(self.run, self.sae, self.final_state())

    def open_trackers(self, *, resume: bool) -> None:
        if self.ranks.is_main:  # one W&B run / event file per run: rank 0 logs for all
            config = to_dict(self.cfg)
            self.trackers = open_trackers(self.cfg.log, self.run.path, config=config, resume=resume)

    def step(self, batch) -> dict[str, float]:
        self.current_lr = self.schedule.apply(self.optimizer, self.base_lrs, self.step_count + 1)
        coef = getattr(self.objective, "coef", None)  # a method's sparsity coefficient, with its warm-up
        self.sparsity_coef = coef() if callable(coef) else None
        try:
            out = training_step(
                self.sae,
                self.objective,
                self.optimizer,
                batch,
                mse_scale=self.mse_scale,
                tracker=self.tracker,
                sync=self.sync,
            )
        except Diverged as err:  # the step's own finite guard: say what was kept and what to try
            self.step_count += 1
            raise self._diverged(err.what) from None
        except DataError as err:
            raise DataError(f"step {self.step_count}: {err}") from None
        self.step_count += 1
        self.tokens += len(batch) if self.sync is None else self.sync.rows  # global under torchrun
        return {"loss": float(out.loss.detach()), **out.losses, **out.metrics}

    def check_finite_parameters(self) -> None:
        """The step's guard, once more after the final renormalisation (before final/ is written)."""
        try:
            check_finite_(self.sae, torch.zeros(()))
        except Diverged as err:
            raise self._diverged(err.what) from None

    def _diverged(self, what: str) -> DataError:
        latest = self.run.latest_checkpoint()
        kept = (
            f"nothing was saved as final/ and the last good checkpoint {latest} is kept"
            if latest is not None
            else "no checkpoint was written yet, so nothing was kept"
        )
        return DataError(
            f"training diverged at step {self.step_count}: {what}; {kept}. Start a new run with a lower lr "
            f"(this run: lr={self.lr:.3g}), or check the activations for outliers"
        )

    def log(self) -> dict[str, float]:
        summary = self._summary()
        self._write_metrics(summary)
        self._window, self._window_start = [], time.perf_counter()
        return summary

    def _summary(self) -> dict[str, float]:
        """Window means of the step records, plus counters, the lr of the last step and throughput."""
        elapsed = time.perf_counter() - self._window_start
        keys = self._window[0].keys()
        summary = {key: sum(r[key] for r in self._window) / len(self._window) for key in keys}
        summary = mean_over_ranks(self.ranks, summary)
        summary.update(
            step=self.step_count,
            tokens=self.tokens,
            lr=self.current_lr,
            dead_fraction=self.tracker.dead_fraction(),
            **self.tracker.window_summary(),
            tokens_per_s=len(self._window) * self.cfg.batch_size / max(elapsed, 1e-9),
        )
        if self.sparsity_coef is not None:
            summary["sparsity_coef"] = self.sparsity_coef
        return summary

    def _write_metrics(self, summary: dict[str, float]) -> None:
        if not self.ranks.is_main:
            return  # rank 0 logs the (rank-averaged) summary for all
        with (
            write_errors(self.run.metrics_path, self.run),
            open(self.run.metrics_path, "a") as fh,
        ):
            fh.write(json.dumps(summary) + "\n")
        self.trackers.log(summary, step=self.step_count)

    def maybe_checkpoint(self) -> None:
        due = self.step_count % self.cfg.checkpoint_every == 0 and self.step_count < self.cfg.total_steps
        if due and self.ranks.is_main:  # identical state on every rank: rank 0 saves it
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
            **world_size_state(self.ranks),
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
        try:
            saved = load_sae(
                step_dir / SAE_SUBDIR, device=self.cfg.device, v1_objective=self.run.format1_objective()
            )
        except RunDirError as err:
            raise corrupt_checkpoint(step_dir, SAE_SUBDIR, f"does not load ({err})") from None
        if saved.d_in != self.sae.d_in or saved.d_sae != self.sae.d_sae:
            raise DataError(
                f"--resume: checkpoint has d_in={saved.d_in}, d_sae={saved.d_sae} but the data "
                f"gives d_in={self.sae.d_in}, d_sae={self.sae.d_sae}; use the cache it was trained on"
            )
        self.sae.load_state_dict(saved.state_dict())
        self.sae.act_scale = saved.act_scale
        state = load_trainer_state(step_dir, self.optimizer)
        check_world_size(self.ranks, state, step_dir)
        try:
            self._load_state(state)
        except RunDirError as err:  # e.g. dead-latent counters of another width
            raise corrupt_checkpoint(step_dir, TRAINER_STATE_FILE, f"does not fit this run ({err})") from None
        except SaekitError:  # e.g. DataError: the reader state is for another cache
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:
            problem = f"does not fit this run ({type(err).__name__}: {err})"
            raise corrupt_checkpoint(step_dir, TRAINER_STATE_FILE, problem) from None
        if self.ranks.is_main:
            truncate_metrics(self.run.metrics_path, self.step_count)
        logger.info("resumed from %s (step %d, %d tokens)", step_dir, self.step_count, self.tokens)

    def _load_state(self, state: dict[str, Any]) -> None:
        self.step_count, self.tokens, self.mse_scale = state["step"], state["tokens"], state["mse_scale"]
        set_rng_state(state["rng"])
        self.source.load_state_dict(state["reader"])
        self.tracker.load_state_dict(_lists_to_tensors(state["dead_tracker"]))
        if "objective" in state:
            self.objective.load_state_dict(state["objective"], self.sae)


def _tensors_to_lists(state: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in state.items()}


def _lists_to_tensors(state: dict[str, Any]) -> dict[str, Any]:
    return {k: (torch.tensor(v) if isinstance(v, list) else v) for k, v in state.items()}
