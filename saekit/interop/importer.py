"""`saekit import SRC --from saelens|sparsify|dictionary_learning|auto OUT`: another tool's SAE as a saekit
run directory (config.yaml + final/), which `saekit eval`, `saekit index` and the app open like any run.

The model and hook point come from the source's metadata (SAELens `model_name`/`hook_name`, sparsify's
hook point directory and run config, dictionary_learning's `lm_name`/`layer`), or from `model=` /
`hookpoint=`; without either the import stops with a message saying which to pass. The run's config names
the model and the offline demo corpus as its held-out text (`live:` section; nothing is trained from it).
Before anything is moved into place, the imported SAE is loaded back with `Sae.load` and compared with an
independent forward of the source format on a sample.

    report = import_sae("gemma-scope/layer_20", "out/gs20", model="/models/gemma-2-2b")
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor

from saekit.config import CollectConfig, TrainConfig
from saekit.config_io import save_config
from saekit.formats import ForeignSae, FormatError, detect_format, read_foreign, sae_choices
from saekit.interop.common import ConversionReport, check_new_directory, load_name, write_report
from saekit.interop.reference import reference_forward
from saekit.interop.sample import load_rows, synthetic_rows
from saekit.interop.verify import compare_outputs, require_agreement
from saekit.io import staged_directory
from saekit.rundir import RunDir
from saekit.sae import Sae
from saekit.sae.foreign import sae_from_foreign

logger = logging.getLogger(__name__)


def import_sae(
    src: str | Path,
    out: str | Path,
    fmt: str = "auto",
    *,
    select: str | None = None,
    model: str | None = None,
    hookpoint: str | None = None,
    sample: Tensor | str | Path | None = None,
) -> ConversionReport:
    """Convert the SAE at `src` (or its subdirectory `select`) into the new run directory `out`, checked."""
    src, out = Path(src), Path(out)
    check_new_directory(out)
    foreign = read_foreign(src, fmt, select)
    source_dir = _source_dir(src, select)
    _apply_overrides(foreign, model, hookpoint, source_dir)
    sae = sae_from_foreign(foreign)
    x, sample_kind = _sample(foreign, sample)
    fmt_used = foreign.format
    with staged_directory(out) as staging:
        run = RunDir(staging)
        sae.save(run.final_dir)
        save_config(_run_config(sae, out), run.config_path)
        loaded = Sae.load(run.final_dir)
        with torch.no_grad():
            converted = (loaded.encode(x, training=False).to_dense(), loaded.reconstruct(x))
        agreement = require_agreement(
            compare_outputs(reference_forward(fmt_used, source_dir, x), converted),
            f"import of {source_dir} from {fmt_used}",
        )
        report = ConversionReport(
            "import", fmt_used, str(source_dir), str(out), foreign.rule, sae.cfg.method, sample_kind,
            agreement, notes=[f"model {sae.model_id!r}, hook point {sae.hookpoint!r}"],
        )  # fmt: skip
        write_report(staging, report)
    logger.info(
        "imported %s (%s) into %s as %s: %s", source_dir, fmt_used, out, sae.cfg.method, agreement.summary()
    )
    return report


def _source_dir(src: Path, select: str | None) -> Path:
    """The directory holding the one SAE's files (what `read_foreign` resolved)."""
    path = src / select if select is not None else src
    if detect_format(path) is None:
        choices = sae_choices(path)
        if len(choices) == 1:
            path = path / next(iter(choices))
    return path


def _apply_overrides(foreign: ForeignSae, model: str | None, hookpoint: str | None, source: Path) -> None:
    if model:
        foreign.model_name = model
    if hookpoint:
        foreign.hookpoint = hookpoint
    missing = [
        what for what, value in (("model", foreign.model_name), ("hookpoint", foreign.hookpoint)) if not value
    ]
    if missing:
        keys = " and ".join(f"{m}=..." for m in missing)
        raise FormatError(
            f"{source} does not record its {' or '.join(missing)}; pass {keys} (e.g. model=embedded "
            "hookpoint=blocks.9.hook_resid_post) so the SAE can be evaluated and indexed"
        )


def _run_config(sae: Sae, out: Path) -> TrainConfig:
    """A run config saying what the SAE reads: its model and hook point (held-out text: the demo corpus)."""
    live = CollectConfig(model=load_name(sae.model_id), hookpoints=(sae.hookpoint,))
    return TrainConfig(
        sae=sae.cfg,
        cache_dir=None,
        hookpoint=sae.hookpoint,
        live=live,
        run_dir=str(out.resolve()),
        total_tokens=1,
        batch_size=1,
        progress=False,
    )


def _sample(foreign: ForeignSae, sample: Tensor | str | Path | None) -> tuple[Tensor, str]:
    if isinstance(sample, Tensor):
        x, kind = sample.float(), "given activations"
    elif sample is not None:
        x, kind = load_rows(Path(sample)), f"activations from {sample}"
    else:
        x = synthetic_rows(foreign.W_dec, foreign.b_dec, foreign.act_scale)
        return x, f"{x.shape[0]} synthetic rows (seed 0)"
    if x.dim() != 2 or x.shape[1] != foreign.d_in or not torch.isfinite(x).all():
        raise FormatError(f"check activations must be finite [rows, {foreign.d_in}], got {tuple(x.shape)}")
    return x, kind
