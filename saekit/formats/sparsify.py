"""sparsify (EleutherAI) SAEs: one `<hookpoint>/{cfg.json, sae.safetensors}` per hook point of a run
directory (which also holds config.json and pickled optimiser state that is never read).

Tensors: `encoder.weight [n, d]`, `encoder.bias [n]`, `W_dec [n, d]` (no transpose), `b_dec [d]`; the
SAE computes z = topk(relu((x − b_dec) encoder.weightᵀ + encoder.bias)), x̂ = z W_dec + b_dec. Refused:
transcoders (`transcode`), skip connections (`W_skip` / `skip_connection`), activations other than topk.
`multi_topk` changes only the training loss, so it reads as plain TopK.

    names = sparsify_hookpoints(Path("checkpoints/run"))     # ["layers.3", "layers.6"]
    foreign = read_sparsify(Path("checkpoints/run/layers.3"))
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from saekit.formats.files import read_json, read_safetensors
from saekit.formats.hooks import from_sparsify_name
from saekit.formats.spec import ForeignSae, FormatError, as_float32, check_foreign, json_beside

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"
RUN_CONFIG = "config.json"
TENSORS = ("encoder.weight", "encoder.bias", "W_dec", "b_dec")


def is_sparsify_dir(path: Path) -> bool:
    """One hook point's directory: cfg.json with sparsify's keys next to sae.safetensors."""
    raw = json_beside(path, CFG_FILE, WEIGHTS_FILE)
    return raw is not None and "k" in raw and "expansion_factor" in raw and "sae" not in raw


def sparsify_hookpoints(path: Path) -> list[str]:
    """Hook point subdirectories of a sparsify run directory (sorted)."""
    if not path.is_dir():
        return []
    return sorted(p.name for p in path.iterdir() if p.is_dir() and is_sparsify_dir(p))


def read_sparsify(path: Path) -> ForeignSae:
    """The SAE of one hook point directory; the model name comes from the run's config.json if present."""
    cfg = read_json(path / CFG_FILE)
    where = str(path / CFG_FILE)
    if cfg.get("transcode"):
        raise FormatError(
            f"{where}: a transcoder (transcode: true) is not an SAE; saekit does not train them"
        )
    if cfg.get("skip_connection"):
        raise FormatError(f"{where}: skip_connection: true (W_skip) is not supported; saekit SAEs have none")
    if cfg.get("activation", "topk") != "topk":
        raise FormatError(
            f"{where}: activation {cfg.get('activation')!r} is not supported; saekit reads topk"
        )
    tensors = read_safetensors(path / WEIGHTS_FILE)
    source = str(path / WEIGHTS_FILE)
    if "W_skip" in tensors:
        raise FormatError(f"{source}: holds W_skip (a skip connection); saekit SAEs have none")
    missing = [n for n in TENSORS if n not in tensors]
    if missing:
        raise FormatError(f"{source} lacks {missing}; it is not a sparsify SAE")
    t = as_float32({n: tensors[n] for n in TENSORS}, source)
    foreign = ForeignSae(
        "sparsify",
        "topk",
        t["encoder.weight"].t().contiguous(),
        t["encoder.bias"],
        t["W_dec"],
        t["b_dec"],
        k=cfg.get("k"),
        hookpoint=from_sparsify_name(path.name) or "",
        model_name=_run_model(path.parent),
        details={
            "sparsify_hookpoint": path.name,
            "multi_topk": bool(cfg.get("multi_topk", False)),
            **({"saekit": cfg["saekit"]} if isinstance(cfg.get("saekit"), dict) else {}),
        },
    )
    if "d_in" in cfg and cfg["d_in"] != foreign.d_in:
        raise FormatError(f"{where}: d_in={cfg['d_in']} but {source} implies {foreign.d_in}")
    return check_foreign(foreign, str(path))


def _run_model(run_dir: Path) -> str:
    try:
        raw = json.loads((run_dir / RUN_CONFIG).read_text())
    except (OSError, ValueError):
        return ""
    return str(raw.get("model") or "") if isinstance(raw, dict) else ""


def write_sparsify(sae: ForeignSae, directory: Path) -> None:
    """Write one hook point's files into `directory` (TopK only: sparsify has no other rule)."""
    if sae.rule != "topk" or sae.act_scale != 1.0:
        raise FormatError("internal: sparsify holds TopK SAEs with the activation scale folded")
    tensors = {
        "encoder.weight": sae.W_enc.t(),
        "encoder.bias": sae.b_enc,
        "W_dec": sae.W_dec,
        "b_dec": sae.b_dec,
    }
    save_file(
        {n: t.detach().float().contiguous().cpu() for n, t in tensors.items()}, str(directory / WEIGHTS_FILE)
    )
    unit_rows = bool(((sae.W_dec.norm(dim=1) - 1).abs() < 1e-5).all())
    cfg = {
        "activation": "topk",
        "expansion_factor": max(1, sae.d_sae // sae.d_in),
        "normalize_decoder": unit_rows,
        "num_latents": sae.d_sae,
        "k": sae.k,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": sae.d_in,
        **({"saekit": sae.details["saekit"]} if "saekit" in sae.details else {}),  # sparsify drops extra keys
    }
    (directory / CFG_FILE).write_text(json.dumps(cfg, indent=2) + "\n")
