"""The harness of the table-driven bad-input suite (imported as a plain module, like sae_checks).

A `Case` runs one `saekit` command against a sandbox holding a tiny cache and runs (copied fresh per case
from a session-built template), and asserts what the README promises for bad input: exit status 2, one
log line at ERROR naming the offending key or file and a fix, no traceback, and no existing file changed
(every file of the sandbox is hashed before and after; new files are allowed only where the case says).

    CASES = [Case("yaml", ["train", "{sandbox}/bad.yaml"], "not valid YAML", setup=write("bad.yaml", "a: ["))]
    @pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
    def test_bad_input(case, sandbox): run_case(case, sandbox)

Placeholders in argv: {sandbox} (the case's copy), {cache} (its cache root), {run} (a finished TopK run),
{ckpt_run} (a run with checkpoints and no final/), {configs} (the repo's configs/).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOOK = "blocks.1.hook_resid_post"


@dataclass
class Case:
    name: str
    argv: list[str]
    fragment: str | tuple[str, ...]
    """Text(s) the one-line error must contain (case-insensitive): the offending key/file and the fix."""
    setup: Callable[[Path], None] | None = None
    """Changes the sandbox before the command (e.g. writes a corrupt file); its files are 'existing'."""
    code: int = 2
    may_create: tuple[str, ...] = ()
    """Relative paths (globs) the command may create, e.g. log files of a refused resume."""
    env: dict[str, str] = field(default_factory=dict)


def write(relative: str, content: str | bytes) -> Callable[[Path], None]:
    """A setup that writes `content` to sandbox/relative (bytes written as is)."""

    def setup(sandbox: Path) -> None:
        path = sandbox / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())

    return setup


def chain(*setups: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(sandbox: Path) -> None:
        for step in setups:
            step(sandbox)

    return setup


def build_template(root: Path) -> Path:
    """A tiny cache (with gradients), a finished TopK run and a run with checkpoints but no final/."""
    from fixtures_run import collect_tiny_cache

    from saekit.config import SaeConfig, TrainConfig
    from saekit.rundir import RunDir
    from saekit.train import train

    collect_tiny_cache(root / "cache", max_tokens=1200, shard_tokens=400, capture_grads=True)
    for name, steps in (("run", 6), ("ckpt_run", 6)):
        train(
            TrainConfig(
                sae=SaeConfig.make("topk", k=4, d_sae=64, dead_tokens=300),
                cache_dir=str(root / "cache"),
                hookpoint=HOOK,
                run_dir=str(root / name),
                total_tokens=64 * steps,
                batch_size=64,
                checkpoint_every=2,
                log_every=2,
                norm_estimation_tokens=256,
                shuffle_buffer_tokens=512,
                progress=False,
            )
        )
    shutil.rmtree(RunDir(root / "ckpt_run").final_dir)
    return root


def fingerprint(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def run_case(case: Case, sandbox: Path, caplog, monkeypatch) -> str:
    """Run the case; return the error line. Fails the test on any broken promise."""
    from saekit.cli import main

    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    if case.setup is not None:
        case.setup(sandbox)
    before = fingerprint(sandbox)
    values = {
        "sandbox": str(sandbox),
        "cache": str(sandbox / "cache"),
        "run": str(sandbox / "run"),
        "ckpt_run": str(sandbox / "ckpt_run"),
        "configs": str(ROOT / "configs"),
    }
    argv = [arg.format(**values) for arg in case.argv]
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="saekit"):
        code = main(argv)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert code == case.code, f"exit {code}, expected {case.code}; log: {caplog.text[-2000:]}"
    assert len(errors) == 1, f"expected one error line, got {[r.getMessage() for r in errors]}"
    line = errors[0].getMessage()
    assert "\n" not in line and "Traceback" not in line and errors[0].exc_info is None, line
    fragments = (case.fragment,) if isinstance(case.fragment, str) else case.fragment
    for fragment in fragments:
        assert fragment.lower() in line.lower(), f"{fragment!r} not in {line!r}"
    after = fingerprint(sandbox)
    changed = [p for p in before if before[p] != after.get(p)]
    assert changed == [], f"existing files changed or vanished: {changed}"
    created = [p for p in after if p not in before and not any(Path(p).match(g) for g in case.may_create)]
    assert created == [], f"files created by a refused command: {created}"
    return line
