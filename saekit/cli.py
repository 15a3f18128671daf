"""`saekit` command line: one subcommand per stage, each parsing one stage config then calling the library.

saekit collect configs/demo_collect.yaml max_tokens=50000
saekit train configs/topk.yaml sae.k=64 [--resume]
saekit eval runs/topk
saekit demo
saekit index runs/topk
saekit app runs
saekit hooks tiny
saekit export runs/topk --format saelens out/topk-saelens
saekit import out/topk-saelens --from auto runs/imported [model=embedded] [hookpoint=blocks.9.hook_resid_post]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from saekit.errors import SaekitError, as_resource_error, one_line

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
    from saekit.train import resume_config, train

    path, overrides = _split_config_and_overrides(args.args)
    # --resume: the run's own settings, with only the keys given here applied (train refuses unsafe ones)
    cfg = resume_config(path, overrides) if args.resume else load_config(TrainConfig, path, overrides)
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
    from saekit.config import IndexConfig, load_config

    cfg = load_config(IndexConfig, args.config, args.overrides)
    path = build_index(Path(args.run), cfg)
    sys.stdout.write(f"index: {path}\n")
    return 0


def cmd_app(args: argparse.Namespace) -> int:
    from saekit.app_launcher import launch_app

    return launch_app(Path(args.runs_dir), port=args.port)


def cmd_compare(args: argparse.Namespace) -> int:
    from saekit.compare import CompareConfig, run_compare
    from saekit.config import load_config

    path, overrides = _split_config_and_overrides(args.args)
    sys.stdout.write(run_compare(load_config(CompareConfig, path, overrides)) + "\n")
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from saekit.config import StudyConfig, load_config
    from saekit.study import run_study

    path, overrides = _split_config_and_overrides(args.args)
    sys.stdout.write(run_study(load_config(StudyConfig, path, overrides)) + "\n")
    return 0


def cmd_hooks(args: argparse.Namespace) -> int:
    from saekit.models import list_hookpoints, load_model

    model = load_model(args.model)
    sys.stdout.write("\n".join(list_hookpoints(model)) + "\n")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from saekit.bench import run_bench
    from saekit.config import BenchConfig, load_config

    path, overrides = _split_config_and_overrides(args.args)
    sys.stdout.write(run_bench(load_config(BenchConfig, path, overrides)) + "\n")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from saekit.interop import export_sae

    report = export_sae(args.source, args.format, Path(args.out), sample=args.sample)
    sys.stdout.write(f"{args.format} ({report.rule}): {report.out}\n{report.agreement.summary()}\n")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from saekit.errors import ConfigError
    from saekit.interop import import_sae

    keys = dict(item.split("=", 1) for item in args.overrides if "=" in item)
    unknown = sorted(set(keys) - {"model", "hookpoint"}) or [i for i in args.overrides if "=" not in i]
    if unknown:
        raise ConfigError(f"import takes model=NAME and hookpoint=HOOK only, got {unknown}")
    report = import_sae(
        args.src, Path(args.out), args.source_format, select=args.sae, sample=args.sample, **keys
    )
    sys.stdout.write(f"run: {report.out} ({report.method})\n{report.agreement.summary()}\n")
    return 0


def stage_keys_help(stage: str) -> str:
    """Every key of a stage's config with its default and doc (`saekit <stage> --help`)."""
    from saekit.config import STAGE_CONFIGS, TrainConfig
    from saekit.config_help import describe_fields, format_help

    cls = STAGE_CONFIGS[stage]
    rows = [row for row in describe_fields(cls) if not row[0].startswith("sae.params")]
    text = f"keys (YAML or key=value; defaults shown):\n{format_help(rows)}"
    if cls is TrainConfig:
        text += "\n\n" + _method_keys_help()
    return text


def _method_keys_help() -> str:
    from saekit.config_help import describe_fields, format_help
    from saekit.sae import METHODS

    parts = ["method keys (sae.<key> or sae.params.<key>), by sae.method:"]
    for name, method in sorted(METHODS.items()):
        parts.append(f"\n{name}: {method.summary}")
        parts.append(format_help(describe_fields(method.params, "sae.")))
    return "\n".join(parts)


_STAGES = (
    ("collect", "cache activations: [CONFIG.yaml] [key=value ...]", "args"),
    ("train", "train an SAE: [CONFIG.yaml] [key=value ...] [--resume]", "args"),
    ("eval", "evaluate a run: RUN_DIR [key=value ...]", "run"),
    ("demo", "collect, train and evaluate on the embedded model end to end", "args"),
    ("compare", "train + evaluate several methods at equal L0: [CONFIG] [key=value ...]", "args"),
    ("study", "k x seed sweep per method; paper claims judged at equal L0: [CONFIG] [key=value ...]", "args"),
    ("index", "build the latent index of a run: RUN_DIR [key=value ...]", "run"),
    ("bench", "speed/memory benchmarks, printed as ratios measured in one run: [key=value ...]", "args"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="saekit", description="Sparse-autoencoder workbench.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_StageParser)
    handlers = {
        "collect": cmd_collect,
        "train": cmd_train,
        "eval": cmd_eval,
        "demo": cmd_demo,
        "compare": cmd_compare,
        "study": cmd_study,
        "index": cmd_index,
        "bench": cmd_bench,
    }
    for name, summary, shape in _STAGES:
        p = sub.add_parser(name, help=summary, description=summary)
        p.stage = name
        _add_verbose(p)
        if shape == "run":
            p.add_argument("run", help="run directory written by `saekit train`")
            p.add_argument("overrides", nargs="*", metavar="key=value")
            p.add_argument("--config", default=None, help="optional YAML with these keys")
        else:
            p.add_argument("args", nargs="*", metavar="CONFIG|key=value")
        if name == "train":
            p.add_argument("--resume", action="store_true", help="continue from the run's newest checkpoint")
        p.set_defaults(func=handlers[name])

    p = sub.add_parser("app", help="start the Streamlit workbench on 127.0.0.1: [RUNS_DIR]")
    p.add_argument("runs_dir", nargs="?", default="runs")
    p.add_argument("--port", type=int, default=8501, help="TCP port, 1-65535")
    _add_verbose(p)
    p.set_defaults(func=cmd_app)

    p = sub.add_parser("hooks", help="list a model's hook points: MODEL (embedded, tiny, a local dir)")
    p.add_argument("model", nargs="?", default="embedded")
    _add_verbose(p)
    p.set_defaults(func=cmd_hooks)
    _add_interop_parsers(sub)
    return parser


def _add_interop_parsers(sub: argparse._SubParsersAction) -> None:
    formats = ("saelens", "sparsify", "dictionary_learning")
    p = sub.add_parser("export", help="write an SAE for SAELens/sparsify/dictionary_learning, checked: "
                       "RUN_OR_SAE --format F OUT")  # fmt: skip
    p.add_argument("source", help="run directory or SAE checkpoint directory")
    p.add_argument("--format", required=True, choices=formats)
    p.add_argument("out", help="new directory for the converted SAE")
    p.add_argument("--sample", default=None, help="activations to check on (.safetensors/.pt/.npy rows)")
    _add_verbose(p)
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("import", help="another tool's SAE as a saekit run, checked: SRC --from F OUT "
                       "[model=NAME] [hookpoint=HOOK]")  # fmt: skip
    p.add_argument("src", help="SAELens / sparsify / dictionary_learning directory")
    p.add_argument("--from", dest="source_format", default="auto", choices=(*formats, "auto"))
    p.add_argument("out", help="new run directory")
    p.add_argument("overrides", nargs="*", metavar="model=|hookpoint=")
    p.add_argument("--sae", default=None, help="which SAE of a directory holding several (a subdirectory)")
    p.add_argument("--sample", default=None, help="activations to check on (.safetensors/.pt/.npy rows)")
    _add_verbose(p)
    p.set_defaults(func=cmd_import)


def _add_verbose(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: an absent subcommand flag must not reset `saekit -v <stage>` to False
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging, tracebacks"
    )


class _StageParser(argparse.ArgumentParser):
    """A subcommand parser whose --help ends with its stage's keys (computed only when help is printed:
    it imports the SAE layer for the method keys)."""

    stage: str | None = None

    def format_help(self) -> str:
        text = super().format_help()
        return f"{text}\n{stage_keys_help(self.stage)}\n" if self.stage else text


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    verbose = getattr(args, "verbose", False)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    os.environ.setdefault("STREAMLIT_BROWSER_GATHER_USAGE_STATS", "false")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        logger.error("interrupted; completed shards/checkpoints are kept — re-run to resume")
        return 130
    except Exception as err:  # the one error boundary: everything becomes one line (see report_error)
        return report_error(err, verbose=verbose)


def report_error(err: Exception, *, verbose: bool = False) -> int:
    """Log `err` as one ERROR line and return the exit status: 2 for expected failures (a SaekitError, or
    an OS failure such as a full disk, with the path and the fix), 1 for anything else (a bug or an
    unchecked input). With `verbose` the traceback follows the line."""
    expected = err if isinstance(err, SaekitError) else as_resource_error(err)
    trace = err if verbose else None
    if expected is not None:
        logger.error("%s", one_line(str(expected)), exc_info=trace)
        return 2
    detail = one_line(str(err), limit=500) or "(no message)"
    logger.error(
        "unexpected %s: %s -- this is a saekit bug or an input it does not check yet; re-run with -v for "
        "the traceback and please report it",
        type(err).__name__,
        detail,
        exc_info=trace,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
