"""`saekit export RUN_OR_SAE --format saelens|sparsify|dictionary_learning OUT`.

The SAE's inference rule is mapped (`saekit.sae.foreign`), its activation scale folded once, the files
written into a staging directory, and then read back by an independent forward of the target format
(`saekit.interop.reference`) and compared with the saekit SAE on a sample — the run's cached activations,
given rows, or a seeded synthetic sample. Only a conversion within tolerance is moved into place.

    report = export_sae("runs/demo/topk", "saelens", "out/topk-saelens")
    report.agreement.max_abs_dx
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import Tensor

from saekit.formats import FORMATS, FormatError, write_foreign
from saekit.formats.hooks import to_sparsify_name
from saekit.interop.common import ConversionReport, check_new_directory, write_report
from saekit.interop.reference import reference_forward
from saekit.interop.sample import SAMPLE_ROWS, cached_rows, load_rows, synthetic_rows
from saekit.interop.verify import compare_outputs, require_agreement
from saekit.io import staged_directory
from saekit.rundir import RunDir
from saekit.sae import Sae
from saekit.sae.foreign import foreign_from_sae

logger = logging.getLogger(__name__)


def open_source(source: str | Path | Sae) -> tuple[Sae, RunDir | None, str]:
    """(SAE, its run directory if any, a name for messages) from a run directory, a checkpoint directory
    or a `Sae`."""
    if isinstance(source, Sae):
        return source.eval(), None, "the given SAE"
    path = Path(source)
    run = RunDir(path)
    if run.is_run():
        return run.load_sae(), run, str(path)
    return Sae.load(path), None, str(path)


def export_sae(
    source: str | Path | Sae,
    fmt: str,
    out: str | Path,
    *,
    sample: Tensor | str | Path | None = None,
) -> ConversionReport:
    """Write `source` (run dir, checkpoint dir or Sae) as `fmt` into the new directory `out`, checked."""
    if fmt not in FORMATS:
        raise FormatError(f"unknown format {fmt!r}; choose one of {list(FORMATS)}")
    out = Path(out)
    check_new_directory(out)
    sae, run, name = open_source(source)
    foreign = foreign_from_sae(sae, fmt)
    x, sample_kind = _sample(sae, run, sample)
    with staged_directory(out) as staging:
        sae_dir = _layout(staging, fmt, sae)
        write_foreign(foreign, fmt, sae_dir)
        with torch.no_grad():
            source_out = (sae.encode(x, training=False).to_dense(), sae.reconstruct(x))
        agreement = require_agreement(
            compare_outputs(source_out, reference_forward(fmt, sae_dir, x)), f"export of {name} to {fmt}"
        )
        report = ConversionReport(
            "export", fmt, name, str(out), foreign.rule, sae.cfg.method, sample_kind, agreement,
            notes=[f"activation scale {sae.act_scale:g} folded into W_enc, W_dec, b_dec"],
        )  # fmt: skip
        write_report(staging, report)
    logger.info("exported %s to %s (%s, %s): %s", name, out, fmt, foreign.rule, agreement.summary())
    return report


def _layout(staging: Path, fmt: str, sae: Sae) -> Path:
    """Where the SAE's files go: sparsify keeps one subdirectory per hook point (plus the run's config)."""
    if fmt != "sparsify":
        return staging
    name = to_sparsify_name(sae.hookpoint) or sae.hookpoint or "sae"
    if name == sae.hookpoint:
        logger.warning("hook point %r has no sparsify module name; using it as the directory name", name)
    (staging / "config.json").write_text(
        json.dumps({"model": sae.model_id, "hookpoints": [name], "exported_by": "saekit"}, indent=2) + "\n"
    )
    (staging / name).mkdir()
    return staging / name


def _sample(sae: Sae, run: RunDir | None, sample: Tensor | str | Path | None) -> tuple[Tensor, str]:
    if isinstance(sample, Tensor):
        return _checked(sample.float(), sae), "given activations"
    if sample is not None:
        return _checked(load_rows(Path(sample)), sae), f"activations from {sample}"
    if run is not None:
        cfg = run.load_config()
        rows = cached_rows(cfg.cache_dir, cfg.hookpoint, SAMPLE_ROWS) if cfg.cache_dir else None
        if rows is not None and rows.shape[1] == sae.d_in:
            return rows, f"last {rows.shape[0]} cached rows of {cfg.cache_dir}"
    x = synthetic_rows(sae.W_dec.detach(), sae.b_dec.detach(), sae.act_scale)
    return x, f"{x.shape[0]} synthetic rows (seed 0)"


def _checked(x: Tensor, sae: Sae) -> Tensor:
    if x.dim() != 2 or x.shape[1] != sae.d_in:
        raise FormatError(f"check activations have shape {tuple(x.shape)}; the SAE needs [rows, {sae.d_in}]")
    if not torch.isfinite(x).all():
        raise FormatError("check activations hold NaN/inf; pass finite rows")
    return x
