"""SAELens directories (`cfg.json` + `sae_weights.safetensors`), inference and training (`save_model`) form.

Read: `topk` (optionally `rescale_acts_by_decoder_norm`), `jumprelu` (`threshold`, or a legacy
`log_threshold`), `standard` (ReLU), and the training architectures `batchtopk` / `matryoshka_batchtopk`
(their learned threshold, as SAELens's own inference save does). `apply_b_dec_to_input: false` is folded
into `b_enc`; an unfolded `expected_average_only_in` scale is taken from `activation_scaler.json`.
Refused with a one-line FormatError: transcoders, skip connections, per-token normalisations
(`layer_norm`, `constant_norm_rescale`), whitening, per-head hooks, unknown architectures.
Written: the inference form, `topk` or `jumprelu`, nothing folded twice (the caller folds the scale once).

    foreign = read_saelens(Path("gemma-scope/layer_20"))
    write_saelens(foreign, Path("out/topk-saelens"))
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from saekit.formats.files import read_json, read_safetensors
from saekit.formats.spec import ForeignSae, FormatError, as_float32, check_foreign, json_beside

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SCALER_FILE = "activation_scaler.json"
SAELENS_VERSION = "6.54.12"
"""The SAELens release whose file layout this module writes (docs/interop.md)."""

THRESHOLD_ARCHITECTURES = ("jumprelu", "batchtopk", "matryoshka_batchtopk")
RULES = {"topk": "topk", "standard": "relu", **dict.fromkeys(THRESHOLD_ARCHITECTURES, "jumprelu")}


def is_saelens_dir(path: Path) -> bool:
    """cfg.json naming an SAELens architecture next to sae_weights.safetensors."""
    raw = json_beside(path, CFG_FILE, WEIGHTS_FILE)
    return raw is not None and "architecture" in raw and "d_sae" in raw


def read_saelens(path: Path) -> ForeignSae:
    """The SAE saved in SAELens directory `path` (either form); FormatError for what it cannot represent."""
    cfg = read_json(path / CFG_FILE)
    arch = cfg.get("architecture")
    where = str(path / CFG_FILE)
    if arch not in RULES:
        kind = "transcoders are not SAEs saekit trains" if "transcoder" in str(arch) else "not supported"
        raise FormatError(f"{where}: architecture {arch!r} is {kind}; saekit reads {sorted(RULES)}")
    _refuse_unrepresentable(cfg, path, where)
    tensors = read_safetensors(path / WEIGHTS_FILE)
    if "W_skip" in tensors:
        raise FormatError(f"{path / WEIGHTS_FILE}: holds W_skip (a skip connection); saekit SAEs have none")
    missing = [n for n in ("W_enc", "b_enc", "W_dec", "b_dec") if n not in tensors]
    if missing:
        raise FormatError(f"{path / WEIGHTS_FILE} lacks {missing}; it is not an SAELens SAE")
    t = as_float32(tensors, str(path / WEIGHTS_FILE))
    W_enc, b_enc, W_dec, b_dec = t["W_enc"], t["b_enc"], t["W_dec"], t["b_dec"]
    if W_dec.shape[-1:] != W_enc.shape[:1]:
        raise FormatError(
            f"{path / WEIGHTS_FILE}: W_dec has shape {tuple(W_dec.shape)} but W_enc {tuple(W_enc.shape)}; an "
            "output width other than d_in is a transcoder (not supported) or the files do not belong together"
        )
    rule = RULES[arch]
    threshold = _threshold(t, arch, path) if rule == "jumprelu" else None
    k = cfg.get("k") if rule == "topk" else None
    if cfg.get("apply_b_dec_to_input", True) is False:  # h = x W_enc + b_enc: fold the missing −b_dec W_enc
        b_enc = b_enc + b_dec @ W_enc
    if cfg.get("rescale_acts_by_decoder_norm", False):  # topk, and the batchtopk training form
        W_enc, b_enc, W_dec = _fold_decoder_norms(W_enc, b_enc, W_dec)
    meta = cfg.get("metadata") or {}
    foreign = ForeignSae(
        "saelens",
        rule,
        W_enc,
        b_enc,
        W_dec,
        b_dec,
        k=k,
        threshold=threshold,
        act_scale=_unfolded_scale(cfg, path),
        hookpoint=str(meta.get("hook_name") or cfg.get("hook_name") or ""),
        model_name=str(meta.get("model_name") or cfg.get("model_name") or ""),
        details={"architecture": arch, **_training_details(cfg, meta)},
    )
    if (
        int(cfg.get("d_sae", foreign.d_sae)) != foreign.d_sae
        or int(cfg.get("d_in", foreign.d_in)) != foreign.d_in
    ):
        raise FormatError(
            f"{where}: d_in={cfg.get('d_in')}, d_sae={cfg.get('d_sae')} but the weights are "
            f"{foreign.d_in} x {foreign.d_sae}; the two files do not belong together"
        )
    return check_foreign(foreign, str(path))


def _refuse_unrepresentable(cfg: dict[str, Any], path: Path, where: str) -> None:
    norm = cfg.get("normalize_activations") or "none"
    if norm not in ("none", "expected_average_only_in"):
        why = (
            "a per-token operation that cannot be folded into the weights"
            if norm != "covariance_whitening"
            else ("whitening of a training checkpoint; load SAELens's inference save, where it is folded")
        )
        raise FormatError(f"{where}: normalize_activations={norm!r} is {why}; saekit cannot represent it")
    if (
        cfg.get("hook_head_index") is not None
        or (cfg.get("metadata") or {}).get("hook_head_index") is not None
    ):
        raise FormatError(f"{where}: an SAE on one attention head (hook_head_index) is not supported")
    if (cfg.get("reshape_activations") or "none") != "none":
        raise FormatError(f"{where}: reshape_activations={cfg['reshape_activations']!r} is not supported")
    if (path / "activation_whitening.safetensors").is_file() and norm == "covariance_whitening":
        raise FormatError(f"{where}: whitening is not supported")


def _threshold(t: dict[str, torch.Tensor], arch: str, path: Path) -> torch.Tensor:
    if "threshold" in t:
        return t["threshold"]
    if "log_threshold" in t:  # older JumpReLU saves: θ = exp(log θ)
        return t["log_threshold"].exp()
    if "topk_threshold" in t:  # BatchTopK training form: one learned scalar for every latent
        return t["topk_threshold"].reshape(-1).expand(t["b_enc"].shape[0]).clone()
    raise FormatError(f"{path / WEIGHTS_FILE}: architecture {arch!r} needs a threshold tensor; none found")


def _fold_decoder_norms(W_enc, b_enc, W_dec):
    """rescale_acts_by_decoder_norm: selection (TopK or threshold) on h·‖d_i‖, decoding z/‖d_i‖ with d_i.
    Scaling encoder column i by n_i and decoder row i by 1/n_i gives the same selection and the same x̂
    with the plain rule."""
    norms = W_dec.norm(dim=1)
    if not bool((norms > 0).all()):
        raise FormatError("rescale_acts_by_decoder_norm with a zero decoder row cannot be represented")
    return W_enc * norms, b_enc * norms, W_dec / norms.unsqueeze(1)


def _unfolded_scale(cfg: dict[str, Any], path: Path) -> float:
    """1.0 for inference saves; a training checkpoint with expected_average_only_in keeps its factor in
    activation_scaler.json (inputs are multiplied by it, outputs divided)."""
    if (cfg.get("normalize_activations") or "none") == "none":
        return 1.0
    scaler = path / SCALER_FILE
    if not scaler.is_file():
        raise FormatError(
            f"{path / CFG_FILE}: normalize_activations=expected_average_only_in but {SCALER_FILE} is "
            "missing, so the input scale is unknown; use the inference save (scale folded) or add the file"
        )
    saved = read_json(scaler)
    if saved.get("has_whitening"):
        raise FormatError(f"{scaler}: the checkpoint whitens its inputs; saekit cannot represent it")
    factor = saved.get("scaling_factor")
    if not isinstance(factor, int | float) or not math.isfinite(factor) or factor <= 0:
        raise FormatError(f"{scaler}: scaling_factor must be a finite number > 0, got {factor!r}")
    return float(factor)


def _training_details(cfg: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    keep = ("training_architecture", "training_architecture_details", "l0", "saekit")
    out = {key: meta[key] for key in keep if key in meta}
    for key in ("k", "matryoshka_widths"):
        if key in cfg:
            out.setdefault("training_architecture_details", {}).setdefault(key, cfg[key])
    return out


# ---------------------------------------------------------------------------------------- writing


def saelens_cfg(sae: ForeignSae, metadata: dict[str, Any]) -> dict[str, Any]:
    """cfg.json of an inference save (SAELens's keys; `k` and the rescale flag for topk only)."""
    if sae.act_scale != 1.0:
        raise FormatError("internal: fold the activation scale before writing an SAELens directory")
    cfg: dict[str, Any] = {
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
    }
    if sae.rule == "topk":
        cfg.update(k=sae.k, rescale_acts_by_decoder_norm=False)
    cfg["architecture"] = {"topk": "topk", "jumprelu": "jumprelu", "relu": "standard"}[sae.rule]
    cfg["metadata"] = metadata
    return cfg


def saelens_metadata(sae: ForeignSae) -> dict[str, Any]:
    """SAELens's metadata keys, plus `saekit` (the exporting method's config, which import restores)."""
    return {
        "sae_lens_version": SAELENS_VERSION,
        "sae_lens_training_version": SAELENS_VERSION,
        "model_name": sae.model_name,
        "hook_name": sae.hookpoint,
        "hook_head_index": None,
        "prepend_bos": True,
        **{
            k: sae.details[k]
            for k in ("training_architecture", "training_architecture_details", "saekit")
            if k in sae.details
        },
    }


def write_saelens(sae: ForeignSae, directory: Path) -> None:
    """Write an inference save into `directory` (an existing, empty staging directory)."""
    tensors = {"W_enc": sae.W_enc, "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
    if sae.rule == "jumprelu":
        tensors["threshold"] = sae.threshold
    tensors = {name: t.detach().float().contiguous().cpu() for name, t in tensors.items()}
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    cfg = saelens_cfg(sae, saelens_metadata(sae))
    (directory / CFG_FILE).write_text(json.dumps(cfg, indent=2) + "\n")
