"""`saekit` command line: one subcommand per stage, each parsing one stage config then calling the library.

saekit collect configs/demo_collect.yaml max_tokens=50000
saekit train configs/topk.yaml sae.k=64 [--resume]
saekit eval runs/topk
saekit demo
saekit index runs/topk
saekit app runs
saekit hooks tiny
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from saekit.errors import SaekitError

logger = logging.getLogger("saekit")


def _split_config_and_overrides(items: list[str]) -> tuple[str | None, list[str]]:
    if items and "=" not in items[0]:
        return items[0], items[1:]
    return None, items


def cmd_collect(args: argparse.Namespace) -> int:
    from saekit.activations import collect
    from saekit.config import CollectConfig, load_config

    path, overrides = _split_config_and_overrides(args.args)
    cfg = load_config(CollectConfig, path, overrides)
    for hookpoint, directory in collect(cfg).items():
        sys.stdout.write(f"{hookpoint}: {directory}\n")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from saekit.config import TrainConfig, load_config
    from saekit.train import train

    path, overrides = _split_config_and_overrides(args.args)
    cfg = load_config(TrainConfig, path, overrides)
    run_dir = train(cfg, resume=args.resume)
    sys.stdout.write(f"run: {run_dir}\n")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from saekit.config import EvalConfig, load_config
    from saekit.eval import evaluate_run, format_eval_table

    cfg = load_config(EvalConfig, args.config, args.overrides)
    result = evaluate_run(Path(args.run), cfg)
    sys.stdout.write(format_eval_table(result) + "\n")
    sys.stdout.write(f"written: {Path(args.run) / 'eval.json'}\n")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from saekit.config import load_config
    from saekit.demo import DemoConfig, run_demo

    path, overrides = _split_config_and_overrides(args.args)
    cfg = load_config(DemoConfig, path, overrides)
    sys.stdout.write(run_demo(cfg) + "\n")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from saekit.analysis import build_index

    opts = _parse_index_options(args.overrides)
    path = build_index(Path(args.run), **opts)
    sys.stdout.write(f"index: {path}\n")
    return 0


def _parse_index_options(items: list[str]) -> dict:
    import yaml

    from saekit.errors import ConfigError

    allowed = {
        "num_sequences",
        "context_length",
        "batch_size",
        "top_examples",
        "quantile_bins",
        "examples_per_bin",
        "compute_output_scores",
        "logit_lens_top_k",
        "seed",
    }
    opts = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in allowed:
            raise ConfigError(f"index option {item!r}: use key=value with keys {sorted(allowed)}")
        opts[key] = yaml.safe_load(value)
    return opts


def cmd_app(args: argparse.Namespace) -> int:
    from saekit.app_launcher import launch_app

    return launch_app(Path(args.runs_dir), port=args.port)


def cmd_compare(args: argparse.Namespace) -> int:
    from saekit.compare import CompareConfig, run_compare
    from saekit.config import load_config

    path, overrides = _split_config_and_overrides(args.args)
    sys.stdout.write(run_compare(load_config(CompareConfig, path, overrides)) + "\n")
    return 0


def cmd_hooks(args: argparse.Namespace) -> int:
    from saekit.models import list_hookpoints, load_model

    model = load_model(args.model)
    sys.stdout.write("\n".join(list_hookpoints(model)) + "\n")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from saekit.bench import run_bench

    sys.stdout.write(run_bench(args.args) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="saekit", description="Sparse-autoencoder workbench.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("collect", help="cache activations: CONFIG.yaml [key=value ...]")
    p.add_argument("args", nargs="*", metavar="CONFIG|key=value")
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser("train", help="train an SAE: CONFIG.yaml [key=value ...]")
    p.add_argument("args", nargs="*", metavar="CONFIG|key=value")
    p.add_argument("--resume", action="store_true", help="continue from the run's newest checkpoint")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a run: RUN_DIR [key=value ...]")
    p.add_argument("run", help="run directory written by `saekit train`")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--config", default=None, help="optional eval YAML")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo", help="collect, train and evaluate on the embedded model end to end")
    p.add_argument("args", nargs="*", metavar="CONFIG|key=value")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("compare", help="train + evaluate several methods at equal L0: CONFIG [key=value ...]")
    p.add_argument("args", nargs="*", metavar="CONFIG|key=value")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("index", help="build the latent index of a run: RUN_DIR [key=value ...]")
    p.add_argument("run", help="run directory written by `saekit train`")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("app", help="start the Streamlit workbench on 127.0.0.1: [RUNS_DIR]")
    p.add_argument("runs_dir", nargs="?", default="runs")
    p.add_argument("--port", type=int, default=8501)
    p.set_defaults(func=cmd_app)

    p = sub.add_parser("hooks", help="list a model's hook points: MODEL (embedded, tiny, a local dir)")
    p.add_argument("model", nargs="?", default="embedded")
    p.set_defaults(func=cmd_hooks)

    p = sub.add_parser("bench", help="speed/memory benchmarks, printed as ratios measured in one run")
    p.add_argument("args", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    os.environ.setdefault("STREAMLIT_BROWSER_GATHER_USAGE_STATS", "false")
    try:
        return args.func(args)
    except SaekitError as err:
        logger.error("%s", err)
        return 2
    except KeyboardInterrupt:
        logger.error("interrupted; completed shards/checkpoints are kept — re-run to resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())
