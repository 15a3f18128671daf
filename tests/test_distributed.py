"""Data parallelism under torchrun (gloo, 2 CPU ranks) against one process: `saekit train` and `collect`.

One torchrun job (tests/torchrun_jobs.py) trains TopK and BatchTopK, collects a cache and tries a refused
start; a second job is killed mid-run and a third resumes it. The one-process references run in this process.

Tolerance: a 2-rank TopK run does the same arithmetic as one process except the order of fp32 sums in the
gradient (each rank's mean over its half, then the all-reduced average), so weights agree to ~1e-7 after a
few dozen steps; the tests allow 2e-5 absolute.
"""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fixtures_run import HOOK, collect_tiny_cache
from safetensors.torch import load_file
from test_distributed_collect import cache_rows

from saekit.activations import ShuffledReader, open_cache
from saekit.config import TrainConfig, from_dict, save_config
from saekit.errors import RunDirError
from saekit.sae import constrained_adam_step
from saekit.train import train
from saekit.train.sources import open_training_source
from saekit.train.trainer import Trainer
from saekit.types import Batch

ROOT = Path(__file__).resolve().parent.parent
ATOL = 2e-5
STEPS = 80  # long enough that a rank can be killed between the first checkpoint and the end


def torchrun(args: list[str], **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "tests")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen)


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    out, _ = proc.communicate(timeout=timeout)
    return out.decode(errors="replace")


def config(cache: Path, method: str, steps: int, **keys) -> TrainConfig:
    return from_dict(
        TrainConfig,
        {
            "sae": {"method": method, "k": 8, "expansion_factor": 4, "dead_tokens": 10**9},
            "cache_dir": str(cache),
            "hookpoint": HOOK,
            "batch_size": 128,
            "total_tokens": 128 * steps,
            "log_every": 10,
            "checkpoint_every": 10,
            "norm_estimation_tokens": 1000,
            "shuffle_buffer_tokens": 1000,
            "progress": False,
            **keys,
        },
    )


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "final" / "sae.safetensors"))


def assert_weights_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = ATOL) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=name)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dp")
    cache = collect_tiny_cache(root / "cache", max_tokens=2048, shard_tokens=512) / HOOK
    topk, btk = config(cache, "topk", STEPS), config(cache, "batchtopk", 12)
    for name, cfg in (("topk", topk), ("batchtopk", btk)):
        save_config(cfg, root / f"{name}.yaml")
    collect_yaml = root / "collect.yaml"
    collect_yaml.write_text(
        f"model: tiny\nhookpoints: [{HOOK}]\ncontext_length: 32\nmax_tokens: 1000\nbatch_size: 8\n"
        "shard_tokens: 200\n"
    )
    jobs = [
        ["train", str(root / "topk.yaml"), f"run_dir={root / 'dp_topk'}"],
        ["train", str(root / "batchtopk.yaml"), f"run_dir={root / 'dp_btk'}"],
        ["collect", str(collect_yaml), f"out_dir={root / 'dp_cache'}"],
        ["train", str(root / "topk.yaml"), f"run_dir={root / 'dp_topk'}"],  # refused: the run exists
    ]
    args = [str(ROOT / "tests" / "torchrun_jobs.py"), str(root)]
    for job in jobs:
        args += [*job, "--"]
    output = finish(torchrun(args[:-1]))
    codes = [json.loads((root / f"rc-{rank}.json").read_text()) for rank in (0, 1)]
    return {"root": root, "cache": cache, "topk": topk, "btk": btk, "codes": codes, "output": output}


def test_reader_ranks_split_every_global_batch(setup):
    """N ranks together deliver the one-process batches, in order; each row once per epoch across ranks."""
    cache = open_cache(setup["cache"])
    batch, world = 128, 3  # parts of 42, 43 and 43 rows; 2048 cache rows = 16 batches per epoch
    one = iter(ShuffledReader(cache, batch, seed=3, buffer_tokens=700))
    readers = [
        ShuffledReader(cache, batch, seed=3, buffer_tokens=700, rank=r, world_size=world) for r in range(3)
    ]
    streams = [iter(r) for r in readers]
    seen = []
    for _ in range(2 * cache.num_tokens // batch):  # two epochs
        parts = [next(s) for s in streams]
        assert [len(p) for p in parts] == [42, 43, 43]
        assert torch.equal(torch.cat([p.acts for p in parts]), next(one).acts)
        seen.append(torch.cat([p.acts for p in parts]))
    everything = torch.unique(cache.rows(cache.num_tokens).float(), dim=0, return_counts=True)
    half = len(seen) // 2
    for epoch in (seen[:half], seen[half:]):  # each epoch: every cache row exactly as often as it is cached
        delivered = torch.unique(torch.cat(epoch), dim=0, return_counts=True)
        assert all(torch.equal(a, b) for a, b in zip(delivered, everything, strict=True))
    assert len({json.dumps(r.state_dict()) for r in readers}) == 1  # the same (global) position everywhere


def test_topk_two_ranks_equal_one_process(setup, tmp_path):
    assert setup["codes"][0][0] == 0, setup["output"][-3000:]
    one = train(dataclasses.replace(setup["topk"], run_dir=str(tmp_path / "one")))
    two = setup["root"] / "dp_topk"
    assert_weights_close(weights(two), weights(one))
    logs = [
        [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (one, two)
    ]
    assert [r["tokens"] for r in logs[1]] == [r["tokens"] for r in logs[0]]  # global token counts
    assert logs[1][-1]["fvu"] == pytest.approx(logs[0][-1]["fvu"], rel=1e-4)
    state = json.loads((two / "final" / "trainer_state.json").read_text())
    assert state["tokens"] == 128 * STEPS


def test_batchtopk_two_ranks_follow_the_documented_rule(setup, tmp_path):
    """Each rank selects the top (B/2)·k of its half; gradients and thresholds are averaged over ranks."""
    assert setup["codes"][0][1] == 0, setup["output"][-3000:]
    cfg = dataclasses.replace(setup["btk"], run_dir=str(tmp_path / "replay"))
    torch.manual_seed(cfg.seed)
    source = open_training_source(cfg)
    trainer = Trainer.create(cfg, source, tmp_path / "replay")
    sae, objective, optimizer = trainer.sae, trainer.objective, trainer.optimizer
    params = list(sae.parameters())
    for _ in range(cfg.total_steps):
        batch = source.next_batch()
        theta, grads, thetas = sae.threshold.clone(), [], []
        for half in (slice(0, 64), slice(64, 128)):
            sae.threshold.copy_(theta)
            part = sae.scale_batch(Batch(batch.acts[half], None, batch.token_ids[half]))
            out = objective(sae, part, dead_mask=None, mse_scale=trainer.mse_scale)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            grads.append([p.grad.clone() for p in params])
            thetas.append(sae.threshold.clone())
        for p, g0, g1 in zip(params, *grads, strict=True):
            p.grad = (g0 + g1) / 2
        sae.threshold.copy_(thetas[0] * 0.5 + thetas[1] * 0.5)
        constrained_adam_step(sae, optimizer)
    sae.normalize_decoder_rows_()
    sae.save(tmp_path / "replay" / "final")
    two = weights(setup["root"] / "dp_btk")
    assert_weights_close(two, weights(tmp_path / "replay"))
    # and it is not the one-process rule: a single global top-(B·k) gives other weights
    one = weights(train(dataclasses.replace(setup["btk"], run_dir=str(tmp_path / "one"))))
    assert max((one[k] - two[k]).abs().max().item() for k in one) > 10 * ATOL


def test_two_rank_collection_holds_the_one_process_rows(setup, tmp_path):
    assert setup["codes"][0][2] == 0, setup["output"][-3000:]
    one = collect_tiny_cache(tmp_path / "one", max_tokens=1000, shard_tokens=200) / HOOK
    two = setup["root"] / "dp_cache" / HOOK
    assert sorted(p.name for p in two.iterdir() if p.name.startswith(".")) == []  # the parts are gone

    a, b = cache_rows(one), cache_rows(two)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    m1, m2 = open_cache(one).manifest, open_cache(two).manifest
    assert (m1["num_tokens"], m1["num_sequences"], m1["excluded_positions"]) == (
        m2["num_tokens"],
        m2["num_sequences"],
        m2["excluded_positions"],
    )
    assert m2["norm_stats"]["mean_norm"] == pytest.approx(m1["norm_stats"]["mean_norm"], rel=1e-9)


def test_a_refused_start_fails_every_rank_with_one_line(setup):
    assert setup["codes"][0][3] == 2 and setup["codes"][1][3] == 2
    assert "already holds a run" in setup["output"]


def test_killed_rank_fails_the_job_and_resume_gives_the_same_result(setup, tmp_path):
    run = tmp_path / "killed"
    proc = torchrun(["-m", "saekit", "train", str(setup["root"] / "topk.yaml"), f"run_dir={run}"])
    first = run / "checkpoints" / "step_0000010"
    deadline = time.monotonic() + 180
    while not first.is_dir() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(worker_pid(proc.pid, rank=1), signal.SIGKILL)
    finish(proc)
    assert proc.returncode != 0
    assert not (run / "final").exists()
    checkpoints = sorted((run / "checkpoints").glob("step_*"))
    assert checkpoints and all((c / "trainer_state.json").is_file() for c in checkpoints)

    resumed = torchrun(
        ["-m", "saekit", "train", str(setup["root"] / "topk.yaml"), f"run_dir={run}", "--resume"]
    )
    output = finish(resumed)
    assert resumed.returncode == 0, output[-3000:]
    reference = weights(setup["root"] / "dp_topk")
    assert_weights_close(weights(run), reference, atol=0)  # same world size: the same arithmetic


def test_resume_refuses_another_world_size(setup, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(setup["root"] / "dp_topk", run)
    shutil.rmtree(run / "final")
    with pytest.raises(RunDirError, match=r"2 rank\(s\) but this job has 1"):
        train(dataclasses.replace(setup["topk"], run_dir=str(run)), resume=True)


def worker_pid(agent: int, rank: int) -> int:
    """The pid of the torchrun worker with RANK=rank among the agent's children."""
    children = Path(f"/proc/{agent}/task/{agent}/children").read_text().split()
    for pid in children:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in env:
            return int(pid)
    raise AssertionError(f"no worker with RANK={rank} among {children}")


def test_live_stream_ranks_split_each_batch_of_sequences(tmp_path):
    """Live streaming under N ranks: rank r runs the model on its contiguous part of every batch of
    sequences; together the ranks see the one-process rows, and all count the same sequences consumed."""
    from saekit.activations import LiveStream
    from saekit.config import CollectConfig
    from saekit.models import load_model

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "\n".join(f"Line {i}: the quick brown fox jumps over {i % 7} lazy dogs." for i in range(200))
    )
    cfg = CollectConfig(model="tiny", hookpoints=(HOOK,), context_length=32, batch_size=4, corpus=str(corpus))
    model = load_model("tiny")
    streams = [
        LiveStream(cfg, HOOK, 64, model=model, rank=r, world_size=w) for r, w in ((0, 1), (0, 2), (1, 2))
    ]
    rows = [s._rows() for s in streams]  # the rows of each forward pass, before the shuffle buffer
    for _ in range(3):
        whole, first, second = (next(g) for g in rows)
        assert torch.equal(whole["token_ids"], torch.cat([first["token_ids"], second["token_ids"]]))
        torch.testing.assert_close(
            whole["acts"], torch.cat([first["acts"], second["acts"]]), rtol=1e-5, atol=1e-5
        )
    assert len({s.sequences_consumed for s in streams}) == 1
