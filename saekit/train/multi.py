"""Many SAEs from one activation stream: `saekit train` with `saes:` or `sweep:`.

Each member is an ordinary run: `<run_dir>/<name>/` holds its own config.yaml (a plain single-SAE
TrainConfig), metrics.jsonl, checkpoints and final/, so eval, index, the app and `--resume` of that one run
treat it like any other. `<run_dir>/config.yaml` holds the group's config (so `saekit train --resume
run_dir=<group>` continues all members); the group directory itself is not a run.

One pass: every batch of the shared stream (`saekit.train.streams`: each cache window read once for all
hook points, or one model forward per batch) is fed to every member in turn. Each member keeps its own
torch RNG state, seeded exactly as a lone run seeds it, and swapped in around its turns, so a member's
weights equal those of training its config.yaml alone with the same seed and data order (bit for bit on
CPU; tests/test_multi_sae.py). Members checkpoint at the same steps; resume restores every member from the
newest step they all have.

    cfg = load_config(TrainConfig, "configs/tiny_topk.yaml", ["run_dir=runs/sweep", "sweep.k=[4,8]"])
    group_dir = train(cfg)          # dispatches here; runs/sweep/k4/ and runs/sweep/k8/ are the runs
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from saekit.config import TrainConfig, save_config
from saekit.errors import RunDirError
from saekit.rundir import OLD_MARK, RunDir, absolute_paths
from saekit.train.checkpoint import read_trainer_state
from saekit.train.progress import postfix, progress_bar
from saekit.train.resume import SAFE_RESUME_KEYS, check_resume, config_differences, record_resume
from saekit.train.sources import TrainingSource, open_training_source
from saekit.train.start import RunClaim, check_new_run, clear_interrupted_start
from saekit.train.streams import HookView, MultiHookLiveStream, MultiHookReader, columns
from saekit.train.trainer import Trainer

logger = logging.getLogger(__name__)


def member_configs(cfg: TrainConfig) -> list[TrainConfig]:
    """Each member as the single-SAE config it would have trained alone (its config.yaml)."""
    root = Path(cfg.run_dir)
    return [
        dataclasses.replace(
            cfg,
            sae=m.sae,
            hookpoint=m.hookpoint or cfg.hookpoint,
            lr=m.lr if m.lr is not None else cfg.lr,
            run_dir=str(root / m.name),
            saes=(),
            sweep=None,
        )
        for m in cfg.members
    ]


class MemberRng:
    """A member's own torch RNG stream: `with rng:` swaps it in, and out again (state kept in between)."""

    def __init__(self, seed: int) -> None:
        outer = torch.get_rng_state()
        torch.manual_seed(seed)  # exactly what a lone run does before building its SAE
        self.state = torch.get_rng_state()
        torch.set_rng_state(outer)

    def __enter__(self) -> MemberRng:
        self._outer = torch.get_rng_state()
        torch.set_rng_state(self.state)
        return self

    def __exit__(self, *exc: object) -> None:
        self.state = torch.get_rng_state()
        torch.set_rng_state(self._outer)


@dataclasses.dataclass
class Group:
    """The members, their trainers and RNG streams, and the shared stream they all read."""

    cfg: TrainConfig
    configs: list[TrainConfig]
    trainers: list[Trainer]
    rngs: list[MemberRng]
    stream: Any
    hooks: list[str]

    def fit(self) -> None:
        total = self.cfg.total_steps
        step = self.trainers[0].step_count
        bar = progress_bar(self.cfg, step, desc=f"train {len(self.trainers)} SAEs")
        batches = iter(self.stream)  # after any restore: continues from the restored position
        while step < total:
            batch = next(batches).to(self.cfg.device)
            for trainer, rng, hook in zip(self.trainers, self.rngs, self.hooks, strict=True):
                with rng:
                    summary = trainer.advance(columns(batch, hook, self.stream.slices))
                if summary is not None and trainer is self.trainers[0]:
                    bar.set_postfix(**postfix(summary))
            step += 1
            bar.update(1)
        bar.close()

    def finish(self) -> None:
        for trainer, rng in zip(self.trainers, self.rngs, strict=True):
            with rng:
                trainer.finish()


def open_group(cfg: TrainConfig, configs: list[TrainConfig], *, init_from_data: bool = True) -> Group:
    """The shared stream and one trainer per member (weights initialised from data unless resuming)."""
    own: dict[str | None, TrainingSource] = {}
    for member in configs:  # one single-hook source per hook point: its sample, description and state
        if member.hookpoint not in own:
            own[member.hookpoint] = open_training_source(member)
    sources = list(own.values())
    stream = _shared_stream(cfg, sources)
    trainers, rngs, hooks = [], [], []
    for member in configs:
        source = own[member.hookpoint]
        view = dataclasses.replace(source, batches=HookView(stream, source.batches))
        rng = MemberRng(member.seed)
        with rng:
            trainers.append(Trainer.create(member, view, Path(member.run_dir), init_from_data=init_from_data))
        rngs.append(rng)
        hooks.append(source.hookpoint)
    return Group(cfg, configs, trainers, rngs, stream, hooks)


def _shared_stream(cfg: TrainConfig, sources: list[TrainingSource]) -> Any:
    """The stream over every hook point, cut like the single-hook streams (batch size and rank share)."""
    single = sources[0].batches
    cut = {key: getattr(single, key) for key in ("rank", "world_size") if hasattr(single, key)}
    if cfg.cache_dir is not None:
        caches = [source.batches.cache for source in sources]
        return MultiHookReader(
            caches, single.batch_size, seed=cfg.seed, buffer_tokens=cfg.shuffle_buffer_tokens, **cut
        )
    hooks = [source.hookpoint for source in sources]
    return MultiHookLiveStream(cfg.live, hooks, single.batch_size, model=single.model, **cut)


# ---------------------------------------------------------------------------------------- entry point


def train_group(cfg: TrainConfig, *, resume: bool = False) -> Path:
    """Train every member of `cfg` from one stream; returns the group directory (members beneath it)."""
    cfg = absolute_paths(cfg)
    group = RunDir(cfg.run_dir)
    configs = member_configs(cfg)
    runs = [RunDir(c.run_dir) for c in configs]
    if group.has_training():
        raise RunDirError(
            f"run_dir {group.path} holds a single-SAE run; a multi-SAE run needs a directory of its own "
            "(choose another run_dir=...)"
        )
    if resume:
        _check_group_resume(group, cfg, configs)
    else:
        for run in runs:
            check_new_run(run)
    with contextlib.ExitStack() as stack:
        claims = [stack.enter_context(RunClaim(run)) for run in runs]
        for claim in claims:
            claim.run.remove_stale_staging()
        if resume:
            _resume_group(cfg, configs)
        else:
            try:
                _start_group(cfg, configs, claims)
            except BaseException:
                if all(run.latest_checkpoint() is None for run in runs):  # nothing resumable
                    for claim in reversed(claims):
                        claim.undo()
                raise
    logger.info("trained %d SAEs under %s", len(configs), group.path)
    return group.path


def _start_group(cfg: TrainConfig, configs: list[TrainConfig], claims: list[RunClaim]) -> None:
    for claim in claims:
        check_new_run(claim.run)  # again, now that we hold the locks
        clear_interrupted_start(claim)
    grp = open_group(cfg, configs)
    for member, trainer in zip(configs, grp.trainers, strict=True):
        save_config(member, trainer.run.config_path)
    save_config(cfg, RunDir(cfg.run_dir).config_path)
    _fit_and_finish(grp, resume=False)


def _check_group_resume(group: RunDir, cfg: TrainConfig, configs: list[TrainConfig]) -> None:
    """Refuse (touching nothing) a resume that changes the group's members or their settings."""
    if not group.config_path.is_file():
        raise RunDirError(
            f"--resume: {group.path} has no config.yaml of a multi-SAE run; start it without --resume"
        )
    changes = config_differences(group.load_config(), cfg)
    unsafe = sorted(key for key in changes if key not in SAFE_RESUME_KEYS)
    if unsafe:
        raise RunDirError(
            f"--resume: {group.config_path} differs in {', '.join(unsafe)}, which change the runs; drop "
            "them to continue as it was, or start a new run_dir=... (only "
            f"{', '.join(SAFE_RESUME_KEYS)} may change)"
        )
    for member in configs:
        check_resume(RunDir(member.run_dir), member)


def _resume_group(cfg: TrainConfig, configs: list[TrainConfig]) -> None:
    _check_group_resume(RunDir(cfg.run_dir), cfg, configs)  # again, now that we hold the locks
    step = common_step([RunDir(c.run_dir) for c in configs])
    grp = open_group(cfg, configs, init_from_data=False)
    for member, trainer, rng in zip(configs, grp.trainers, grp.rngs, strict=True):
        run = trainer.run
        changes = check_resume(run, member)
        _drop_checkpoints_after(run, step)
        with rng:
            trainer.restore(run.step_dir(step))
        record_resume(run, member, changes, run.step_dir(step), step)
    save_config(cfg, RunDir(cfg.run_dir).config_path)
    _fit_and_finish(grp, resume=True)


def common_step(runs: list[RunDir]) -> int:
    """The newest checkpoint step every member has (a kill between members' saves leaves some ahead)."""
    steps = [{read_trainer_state(p)["step"] for p in run.checkpoints()} for run in runs]
    shared = set.intersection(*steps)
    if not shared:
        raise RunDirError(
            f"--resume: the SAEs under {runs[0].path.parent} have no checkpoint step in common "
            f"({', '.join(f'{r.path.name}: {sorted(s)}' for r, s in zip(runs, steps, strict=True))}); "
            "resume each one alone with --resume run_dir=<member>, or start again"
        )
    return max(shared)


def _drop_checkpoints_after(run: RunDir, step: int) -> None:
    """Set aside, then delete, checkpoints newer than the group's resume step: they are recomputed."""
    for path in run.checkpoints():
        if read_trainer_state(path)["step"] > step:
            aside = path.with_name(f".{path.name}{OLD_MARK}{os.getpid()}")
            os.replace(path, aside)
            shutil.rmtree(aside, ignore_errors=True)
            logger.info("%s: dropped %s (newer than the group's common step %d)", run.path, path.name, step)


def _fit_and_finish(grp: Group, *, resume: bool) -> None:
    for trainer in grp.trainers:
        trainer.open_trackers(resume=resume)
    try:
        grp.fit()
    finally:
        for trainer in grp.trainers:
            trainer.trackers.close()
    grp.finish()
