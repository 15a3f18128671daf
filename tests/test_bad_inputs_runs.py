"""Bad inputs to `saekit train` on run directories: resumes that would contradict the run, damaged
checkpoints, directories that are not runs, a second writer, failed starts. Each exits 2 with one line that
names the key/file and the fix, and changes no existing file (harness: tests/bad_inputs.py).

The resume cases pass the run's own config.yaml as CONFIG, so only the listed overrides differ from the run.
"""

import json
import shutil

import pytest
from bad_inputs import Case, chain, run_case, write
from filelock import FileLock

RUN = ["train", "{run}/config.yaml", "run_dir={run}"]
CKPT = ["train", "{ckpt_run}/config.yaml", "run_dir={ckpt_run}"]
LATEST = "ckpt_run/checkpoints/step_0000004"
"""The newest checkpoint of the template's unfinished run (checkpoints at steps 2 and 4, batch 64)."""

_held_locks: list[FileLock] = []


def hold_lock(relative):
    """A setup that holds the run's lock like a running `saekit train` (released after the case)."""

    def setup(sandbox):
        lock = FileLock(str(sandbox / relative / ".saekit.lock"), timeout=0)
        lock.acquire()
        _held_locks.append(lock)

    return setup


def mkdir(relative):
    def setup(sandbox):
        (sandbox / relative).mkdir(parents=True, exist_ok=True)

    return setup


def copy(src, dst):
    def setup(sandbox):
        shutil.copyfile(sandbox / src, sandbox / dst)

    return setup


def remove(relative):
    def setup(sandbox):
        path = sandbox / relative
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    return setup


def truncate(relative, keep=0.5):
    def setup(sandbox):
        data = (sandbox / relative).read_bytes()
        (sandbox / relative).write_bytes(data[: int(len(data) * keep)])

    return setup


def edit_state(**changes):
    """A setup that rewrites fields of the newest checkpoint's trainer_state.json."""

    def setup(sandbox):
        path = sandbox / LATEST / "trainer_state.json"
        state = json.loads(path.read_text())
        for key, value in changes.items():
            if value is _DROP:
                state.pop(key)
            else:
                state[key] = value
        path.write_text(json.dumps(state))

    return setup


_DROP = object()


def resume(*overrides):
    return [*RUN, *overrides, "--resume"]


CASES = [
    # ------------------------------------------------------------ resume: settings that change the run
    Case("resume: sae.params.k", resume("sae.params.k=2"), ("sae.k: run has 4, given 2", "run_dir=")),
    Case(
        "resume: init_b_dec", resume("sae.init_b_dec=mean"), ('sae.init_b_dec: run has "geometric_median"',)
    ),
    Case("resume: lr", resume("lr=0.05"), ("lr: run has null, given 0.05", "drop them")),
    Case("resume: batch_size", resume("batch_size=100"), ("batch_size: run has 64, given 100",)),
    Case("resume: seed", resume("seed=1"), ("seed: run has 0, given 1",)),
    Case(
        "resume: method", resume("sae.method=batchtopk"), ('sae.method: run has "topk", given "batchtopk"',)
    ),
    Case("resume: d_sae", resume("sae.d_sae=128"), ("sae.d_sae: run has 64, given 128",)),
    Case("resume: expansion_factor", resume("sae.expansion_factor=4"), ("sae.expansion_factor",)),
    Case("resume: dead_tokens", resume("sae.dead_tokens=100"), ("sae.dead_tokens: run has 300",)),
    Case("resume: encoder_bf16", resume("sae.encoder_bf16=true"), ("sae.encoder_bf16: run has false",)),
    Case("resume: another cache", resume("cache_dir={sandbox}/cache"), ("cache_dir: run has",)),
    Case("resume: adam_eps", resume("adam_eps=1e-8"), ("adam_eps: run has",)),
    Case("resume: adam_betas", resume("adam_betas=[0.8,0.9]"), ("adam_betas: run has [0.9, 0.999]",)),
    Case(
        "resume: shuffle buffer",
        resume("shuffle_buffer_tokens=1024"),
        ("shuffle_buffer_tokens: run has 512",),
    ),
    Case(
        "resume: norm tokens", resume("norm_estimation_tokens=128"), ("norm_estimation_tokens: run has 256",)
    ),
    Case("resume: hookpoint", resume("hookpoint=blocks.0.hook_resid_post"), ("hookpoint: run has",)),
    Case("resume: live section", resume("live.model=tiny"), ("live: run has null",)),
    Case(
        "resume: no CONFIG", ["train", "run_dir={run}", "sae.k=2", "--resume"], ("sae.k: run has 4, given 2",)
    ),
    Case(
        "resume: total_tokens below the checkpoint",
        [*CKPT, "total_tokens=64", "--resume"],
        ("total_tokens=64", "step 4", "total_tokens >= 256"),
    ),
    # ------------------------------------------------------------ resume: not a run, nothing to resume
    Case(
        "resume: folder without config.yaml",
        ["train", "{run}/config.yaml", "run_dir={sandbox}/plain", "--resume"],
        ("not a run directory", "without --resume"),
        setup=write("plain/notes.txt", "mine"),
    ),
    Case(
        "resume: run_dir is a file",
        ["train", "{run}/config.yaml", "run_dir={sandbox}/afile", "--resume"],
        ("afile is a file",),
        setup=write("afile", "x"),
    ),
    Case(
        "resume: no checkpoint yet",
        ["train", "{run}/config.yaml", "run_dir={sandbox}/early", "--resume"],
        ("no checkpoint yet", "without --resume"),
        setup=chain(mkdir("early"), copy("run/config.yaml", "early/config.yaml")),
    ),
    Case(
        "resume: run config.yaml is not YAML",
        ["train", "run_dir={ckpt_run}", "--resume"],
        ("config.yaml", "not valid yaml"),
        setup=write("ckpt_run/config.yaml", "sae: [\n"),
    ),
    # ------------------------------------------------------------ resume: damaged checkpoint files
    Case(
        "resume: trainer_state.json not JSON",
        [*CKPT, "--resume"],
        ("step_0000004/trainer_state.json", "not valid json", "delete", "step_0000002"),
        setup=write(f"{LATEST}/trainer_state.json", '{"step": 4, "tok'),
    ),
    Case(
        "resume: trainer_state.json a list",
        [*CKPT, "--resume"],
        ("trainer_state.json", "json object", "delete"),
        setup=write(f"{LATEST}/trainer_state.json", "[1, 2]"),
    ),
    Case(
        "resume: trainer_state step of wrong type",
        [*CKPT, "--resume"],
        ("trainer_state.json", "'step'", "delete"),
        setup=edit_state(step="abc"),
    ),
    Case(
        "resume: trainer_state negative step",
        [*CKPT, "--resume"],
        ("trainer_state.json", "negative", "delete"),
        setup=edit_state(step=-4),
    ),
    Case(
        "resume: trainer_state without rng",
        [*CKPT, "--resume"],
        ("trainer_state.json", "'rng'"),
        setup=edit_state(rng=_DROP),
    ),
    Case(
        "resume: dead-latent state of another width",
        [*CKPT, "--resume"],
        ("trainer_state.json", "does not fit this run", "delete"),
        setup=edit_state(dead_tracker={"tokens_since_fired": [0, 0, 0]}),
    ),
    Case(
        "resume: truncated optimizer.safetensors",
        [*CKPT, "--resume"],
        ("step_0000004/optimizer.safetensors", "truncated", "delete"),
        setup=truncate(f"{LATEST}/optimizer.safetensors"),
    ),
    Case(
        "resume: missing optimizer.safetensors",
        [*CKPT, "--resume"],
        ("optimizer.safetensors", "missing", "delete"),
        setup=remove(f"{LATEST}/optimizer.safetensors"),
    ),
    Case(
        "resume: truncated checkpoint weights",
        [*CKPT, "--resume"],
        ("step_0000004/sae", "sae.safetensors", "delete"),
        setup=truncate(f"{LATEST}/sae/sae.safetensors", keep=0.3),
    ),
    Case(
        "resume: the only checkpoint is damaged",
        [*CKPT, "--resume"],
        ("only checkpoint", "train again"),
        setup=chain(remove("ckpt_run/checkpoints/step_0000002"), write(f"{LATEST}/trainer_state.json", "{")),
    ),
    # ------------------------------------------------------------ another writer
    Case(
        "resume: another train holds the run",
        [*CKPT, "--resume"],
        ("in use by another", ".saekit.lock"),
        setup=hold_lock("ckpt_run"),
    ),
    # ------------------------------------------------------------ new runs: directories that are not ours
    Case(
        "train: unfinished run without --resume",
        CKPT,
        ("already holds a run", "--resume"),
    ),
    Case(
        "train: folder with other files",
        ["train", "{run}/config.yaml", "run_dir={sandbox}/mine"],
        ("not empty", "notes.txt", "run_dir="),
        setup=write("mine/notes.txt", "my notes"),
    ),
    Case(
        "train: a user's config.yaml and metrics.jsonl",
        ["train", "{run}/config.yaml", "run_dir={sandbox}/mine"],
        ("not empty", "config.yaml, metrics.jsonl"),
        setup=chain(write("mine/config.yaml", "lr: 1\n"), write("mine/metrics.jsonl", '{"step": 1}\n')),
    ),
    Case(
        "train: run_dir is a file",
        ["train", "{run}/config.yaml", "run_dir={sandbox}/afile"],
        ("afile is a file", "run_dir="),
        setup=write("afile", "x"),
    ),
    Case(
        "train: run_dir below a file",
        ["train", "{run}/config.yaml", "run_dir={sandbox}/afile/run"],
        ("cannot create run_dir", "afile/run"),
        setup=write("afile", "x"),
    ),
    # ------------------------------------------------------------ failed starts leave nothing behind
    Case(
        "train: missing cache leaves no run dir",
        ["train", "{run}/config.yaml", "run_dir={sandbox}/new/run", "cache_dir={sandbox}/nocache"],
        ("nocache",),
    ),
    Case(
        "train: hook point not in the cache",
        [
            "train",
            "{run}/config.yaml",
            "run_dir={sandbox}/new",
            "cache_dir={cache}",
            "hookpoint=blocks.0.mlp",
        ],
        ("blocks.0.mlp",),
    ),
    Case(
        "train: diverging lr in an existing empty dir",
        ["train", "{run}/config.yaml", "run_dir={sandbox}/empty", "lr=1e30"],
        ("diverged at step 2", "nothing was kept", "lower lr"),
        setup=mkdir("empty"),
    ),
    Case(
        "train: lr=.inf",
        ["train", "{run}/config.yaml", "run_dir={sandbox}/new", "lr=.inf"],
        ("lr",),  # refused by the config, or else by the finite-loss guard at step 1
    ),
]


@pytest.fixture
def release_locks():
    yield
    while _held_locks:
        _held_locks.pop().release()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_run_input(case, sandbox, caplog, monkeypatch, release_locks):
    run_case(case, sandbox, caplog, monkeypatch)
    if case.name.endswith("leaves no run dir") or case.name == "train: lr=.inf":
        assert not (sandbox / "new").exists()
    if case.name.endswith("existing empty dir"):
        assert list((sandbox / "empty").iterdir()) == []
