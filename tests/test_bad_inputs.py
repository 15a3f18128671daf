"""Table-driven bad-input suite: every case exits 2 with one line that names the key/file and the fix, and
leaves every existing file unchanged (harness: tests/bad_inputs.py).

Cases here cover the config/CLI side: config files and overrides, stage-config validation (collect, train,
eval, index, compare, demo, bench), cache manifests, devices, paths in the way, and `saekit app`."""

import json
import shutil
from pathlib import Path

import pytest
import yaml
from bad_inputs import HOOK, Case, chain, run_case, write

MANIFEST = f"cache/{HOOK}/manifest.json"
TRAIN = ["train", "{configs}/tiny_topk.yaml", "cache_dir={cache}", "run_dir={sandbox}/new"]
COLLECT = ["collect", "model=tiny", f"hookpoints=[{HOOK}]", "out_dir={sandbox}/new_cache", "max_tokens=64"]


def edit_manifest(change):
    """A setup that rewrites the sandbox cache's manifest.json with `change(manifest)` applied."""

    def setup(sandbox: Path) -> None:
        path = sandbox / MANIFEST
        manifest = json.loads(path.read_text())
        change(manifest)
        path.write_text(json.dumps(manifest))

    return setup


def use_sandbox_cache(sandbox: Path) -> None:
    """Point the finished run at the sandbox's own cache (the template run records the template's)."""
    path = sandbox / "run" / "config.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["cache_dir"] = str(sandbox / "cache")
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def remove(relative: str):
    return lambda sandbox: shutil.rmtree(sandbox / relative)


def narrow_cache(manifest: dict) -> None:
    manifest["d_in"] = 32
    manifest["norm_stats"]["mean"] = manifest["norm_stats"]["mean"][:32]


CONFIG_FILES = [
    Case(
        "train: config file is not a mapping",
        ["train", "{sandbox}/list.yaml"],
        ("list.yaml", "mapping"),
        setup=write("list.yaml", "- a\n- b\n"),
    ),
    Case(
        "train: YAML syntax error",
        ["train", "{sandbox}/bad.yaml"],
        ("bad.yaml", "starts at line 3", "fix the syntax"),
        setup=write("bad.yaml", "sae:\n  k: 4\nlr: [1e-3\n"),
    ),
    Case(
        "train: binary config file",
        ["train", "{sandbox}/image.yaml"],
        ("image.yaml", "not UTF-8", "binary"),
        setup=write("image.yaml", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))),
    ),
    Case(
        "train: !!python/object tag",
        ["train", "{sandbox}/tag.yaml"],
        ("tag.yaml", "line 2", "remove the !!python"),
        setup=write("tag.yaml", "lr: 1e-3\nsae: !!python/object/apply:os.system ['echo pwned']\n"),
    ),
    Case(
        "train: latin-1 config",
        ["train", "{sandbox}/latin1.yaml"],
        ("latin1.yaml", "line 2", "UTF-8"),
        setup=write("latin1.yaml", "lr: 1e-3\nrun_dir: caf\xe9\n".encode("latin-1")),
    ),
    Case(
        "train: NUL byte in config",
        ["train", "{sandbox}/nul.yaml"],
        ("nul.yaml", "line 2", "binary"),
        setup=write("nul.yaml", "lr: 1e-3\nk: \x00\n"),
    ),
    Case(
        "train: config file is a directory",
        ["train", "{sandbox}/cache"],
        ("cache", "is a directory", "YAML file"),
    ),
    Case("train: config file missing", ["train", "{sandbox}/nope.yaml"], ("nope.yaml", "does not exist")),
    Case(
        "train: unknown key in the file",
        ["train", "{sandbox}/typo.yaml"],
        ("batchsize", "did you mean"),
        setup=write("typo.yaml", "batchsize: 64\n"),
    ),
    Case(
        "eval: --config with a YAML error",
        ["eval", "{run}", "--config", "{sandbox}/e.yaml"],
        ("e.yaml", "line 2", "fix the syntax"),
        setup=write("e.yaml", "num_sequences: [\n"),
    ),
]

OVERRIDES = [
    Case("train: unknown key", ["train", "{configs}/tiny_topk.yaml", "sae.kk=3"], ("sae.kk", "did you mean")),
    Case(
        "train: unknown method",
        ["train", "sae.method=topkk", "run_dir={sandbox}/new"],
        ("topkk", "did you mean"),
    ),
    Case("train: override is bad YAML", [*TRAIN, "sae.k=[1"], ("sae.k=[1", "quote")),
    Case("train: override without =", [*TRAIN, "lr"], ("'lr'", "key=value")),
    Case("train: override with an empty key part", [*TRAIN, "sae..k=3"], ("sae..k=3", "key=value")),
    Case("train: lr is not a number", [*TRAIN, "lr=fast"], ("lr", "a number (e.g. 3e-4)")),
    Case("collect: empty out_dir", [*COLLECT, "out_dir="], ("out_dir", "give a value")),
    Case("train: total_tokens=abc", [*TRAIN, "total_tokens=abc"], ("total_tokens", "an integer")),
]

TRAIN_VALUES = [
    Case("train: adam_betas out of range", [*TRAIN, "adam_betas=[1.5,2]"], ("adam_betas[0]", "[0, 1)")),
    Case("train: adam_betas wrong length", [*TRAIN, "adam_betas=[0.9]"], ("adam_betas", "2 items")),
    Case("train: adam_eps negative", [*TRAIN, "adam_eps=-1"], ("adam_eps", "must be > 0")),
    Case(
        "train: shuffle buffer zero",
        [*TRAIN, "shuffle_buffer_tokens=0"],
        ("shuffle_buffer_tokens", "positive"),
    ),
    Case(
        "train: norm estimation zero",
        [*TRAIN, "norm_estimation_tokens=0"],
        ("norm_estimation_tokens", "positive"),
    ),
    Case("train: batch_size zero", [*TRAIN, "batch_size=0"], ("batch_size", "positive")),
    Case("train: lr infinite", [*TRAIN, "lr=.inf"], ("lr", "finite")),
    Case("train: lr nan", [*TRAIN, "lr=.nan"], ("lr", "finite")),
    Case("train: lr negative", [*TRAIN, "lr=-0.1"], ("lr", "> 0")),
    Case("train: device is not a device", [*TRAIN, "device=gpu"], ("device", "not a torch device", "cpu")),
    Case(
        "train: CUDA device that is not there", [*TRAIN, "device=cuda:99"], ("device=cuda:99", "device=cpu")
    ),
    Case("train: empty run_dir", [*TRAIN, "run_dir=' '"], ("run_dir", "must be a path")),
    Case(
        "train: existing run without --resume",
        ["train", "{configs}/tiny_topk.yaml", "run_dir={run}"],
        "--resume",
    ),
]

MANIFESTS = [
    Case(
        "train: manifest shards not a list",
        TRAIN,
        ("manifest.json", "'shards'", "saekit collect"),
        setup=edit_manifest(lambda m: m.update(shards=5)),
    ),
    Case(
        "train: manifest d_in a string",
        TRAIN,
        ("'d_in'", "positive integer", "saekit collect"),
        setup=edit_manifest(lambda m: m.update(d_in="64")),
    ),
    Case(
        "train: manifest format_version a string",
        TRAIN,
        ("'format_version'", "saekit collect"),
        setup=edit_manifest(lambda m: m.update(format_version="1")),
    ),
    Case(
        "train: manifest lacks d_in",
        TRAIN,
        ("manifest.json", "d_in", "saekit collect"),
        setup=edit_manifest(lambda m: m.pop("d_in")),
    ),
    Case(
        "train: manifest is a JSON list",
        TRAIN,
        ("manifest.json", "list", "saekit collect"),
        setup=write(MANIFEST, "[1, 2]\n"),
    ),
    Case(
        "train: manifest truncated",
        TRAIN,
        ("manifest.json", "not valid JSON", "saekit collect"),
        setup=write(MANIFEST, '{"format_version": 1, "hookp'),
    ),
    Case(
        "train: manifest shard outside the cache",
        TRAIN,
        ("shards[0].file", "inside the cache directory"),
        setup=edit_manifest(lambda m: m["shards"][0].update(file="../../run/config.yaml")),
    ),
    Case(
        "train: manifest shard sha256 missing",
        TRAIN,
        ("shards[1].sha256", "saekit collect"),
        setup=edit_manifest(lambda m: m["shards"][1].pop("sha256")),
    ),
    Case(
        "train: manifest num_tokens disagrees",
        TRAIN,
        ("'num_tokens'", "saekit collect"),
        setup=edit_manifest(lambda m: m.update(num_tokens=99)),
    ),
    Case(
        "train: manifest has_grads a string",
        TRAIN,
        ("'has_grads'", "true or false"),
        setup=edit_manifest(lambda m: m.update(has_grads="yes")),
    ),
]

COLLECT_CASES = [
    Case(
        "collect: out_dir is a file",
        [*COLLECT, "out_dir={sandbox}/afile"],
        ("afile", "out_dir", "remove"),
        setup=write("afile", "not a directory\n"),
    ),
    Case("collect: context_length 1", [*COLLECT, "context_length=1"], ("context_length", "BOS")),
    Case(
        "collect: context longer than the model's",
        [*COLLECT, "context_length=4096"],
        ("context_length=4096", "128"),
    ),
    Case("collect: storage dtype", [*COLLECT, "dtype=int8"], ("dtype", "must be one of")),
    Case("collect: max_tokens zero", [*COLLECT, "max_tokens=0"], ("max_tokens", "positive")),
    Case("collect: no hook points", [*COLLECT, "hookpoints=[]"], ("hookpoints", "at least one")),
    Case("collect: device is not a device", [*COLLECT, "device=tpu0"], ("device", "not a torch device")),
    Case(
        "collect: unknown hook point",
        [*COLLECT, "hookpoints=[blocks.1.hook_resid_pst]"],
        ("hook_resid_pst", "saekit hooks"),
    ),
    Case(
        "collect: into a cache with other settings",
        [
            "collect",
            "model=tiny",
            f"hookpoints=[{HOOK}]",
            "out_dir={cache}",
            "max_tokens=999",
            "context_length=32",
        ],
        ("already holds a cache", "choose another out_dir"),
    ),
]

EVAL_CASES = [
    Case("eval: missing run", ["eval", "{sandbox}/nope"], ("does not exist",)),
    Case("eval: num_sequences zero", ["eval", "{run}", "num_sequences=0"], ("num_sequences", "positive")),
    Case("eval: max_eval_rows zero", ["eval", "{run}", "max_eval_rows=0"], ("max_eval_rows", "positive")),
    Case(
        "eval: dense_threshold above 1", ["eval", "{run}", "dense_threshold=2"], ("dense_threshold", "(0, 1]")
    ),
    Case("eval: device is not a device", ["eval", "{run}", "device=gpu"], ("device", "not a torch device")),
    Case(
        "eval: cache d_in differs from the SAE",
        ["eval", "{run}"],
        ("d_in=32", "d_in=64", "cache_dir"),
        setup=chain(use_sandbox_cache, edit_manifest(narrow_cache)),
    ),
    Case(
        "eval: training cache deleted",
        ["eval", "{run}"],
        (HOOK, "saekit collect"),
        setup=chain(use_sandbox_cache, remove("cache")),
    ),
    Case(
        "eval: context longer than the model's",
        ["eval", "{run}", "context_length=4096"],
        ("context_length=4096", "128"),
    ),
]

OTHER_STAGES = [
    Case(
        "index: num_sequences=abc", ["index", "{run}", "num_sequences=abc"], ("num_sequences", "an integer")
    ),
    Case("index: context_length 1", ["index", "{run}", "context_length=1"], ("context_length", "BOS")),
    Case("index: top_examples zero", ["index", "{run}", "top_examples=0"], ("top_examples", "positive")),
    Case("index: missing run", ["index", "{sandbox}/nope"], ("nope", "does not exist")),
    Case("compare: k zero", ["compare", "k=0"], ("k", "positive")),
    Case("compare: no methods", ["compare", "methods=[]"], ("methods", "at least one")),
    Case("compare: threshold_ema above 1", ["compare", "threshold_ema=2"], ("threshold_ema", "(0, 1]")),
    Case("bench: d_sae zero", ["bench", "d_sae=0"], ("d_sae", "> 0")),
    Case("bench: reps zero", ["bench", "reps=0"], ("reps", "positive")),
    Case("bench: unknown method", ["bench", "method=topkk"], ("topkk", "did you mean")),
    Case("demo: epochs zero", ["demo", "epochs=0"], ("epochs", "positive")),
    Case("demo: context_length 1", ["demo", "context_length=1"], ("context_length", "BOS")),
    Case("app: port out of range", ["app", "{sandbox}", "--port", "99999"], ("--port 99999", "1-65535")),
    Case("app: port zero", ["app", "{sandbox}", "--port", "0"], ("--port 0", "1-65535")),
    Case(
        "app: missing runs directory", ["app", "{sandbox}/nope", "--port", "8765"], ("nope", "does not exist")
    ),
]

CASES = CONFIG_FILES + OVERRIDES + TRAIN_VALUES + MANIFESTS + COLLECT_CASES + EVAL_CASES + OTHER_STAGES


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input(case, sandbox, caplog, monkeypatch):
    run_case(case, sandbox, caplog, monkeypatch)


def test_the_table_is_large_and_names_are_unique():
    assert len(CASES) >= 35
    assert len({c.name for c in CASES}) == len(CASES)
