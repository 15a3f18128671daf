"""dictionary_learning (saprmarks) SAEs: `ae.pt` (a tensor state dict, read with weights_only=True only)
plus `config.json` (a `trainer` section: dict_class, activation_dim, dict_size, k, layer, lm_name,
submodule_name).

Classes read and written: `AutoEncoderTopK` (relu, then the k largest), `BatchTopKSAE` (relu(h) kept where
it exceeds one scalar threshold), `JumpReluAutoEncoder` (W_enc/b_enc/W_dec/b_dec/threshold, b_dec *not*
subtracted from the input). TopK and BatchTopK store nn.Linear weights: `encoder.weight [n, d]`,
`encoder.bias [n]`, `decoder.weight [d, n]` (transposed on read), `b_dec [d]`, and buffers `k`,
`threshold`. dictionary_learning folds its activation scale into the saved weights.

    foreign = read_dictionary_learning(Path("trainer_0"))
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from saekit.formats.files import read_json, read_torch_state
from saekit.formats.hooks import from_layer_and_submodule, layer_and_submodule
from saekit.formats.spec import ForeignSae, FormatError, as_float32, check_foreign

WEIGHTS_FILE = "ae.pt"
CONFIG_FILE = "config.json"
LINEAR_CLASSES = ("AutoEncoderTopK", "BatchTopKSAE")
CLASSES = (*LINEAR_CLASSES, "JumpReluAutoEncoder")


def is_dictionary_learning_dir(path: Path) -> bool:
    return (path / WEIGHTS_FILE).is_file() and (path / CONFIG_FILE).is_file()


def read_dictionary_learning(path: Path) -> ForeignSae:
    trainer = read_json(path / CONFIG_FILE).get("trainer")
    where = str(path / CONFIG_FILE)
    if not isinstance(trainer, dict):
        raise FormatError(f"{where} has no 'trainer' section; it was not written by dictionary_learning")
    dict_class = trainer.get("dict_class")
    if dict_class not in CLASSES:
        raise FormatError(
            f"{where}: dict_class {dict_class!r} is not supported; saekit reads {list(CLASSES)}"
        )
    state = read_torch_state(path / WEIGHTS_FILE)
    source = str(path / WEIGHTS_FILE)
    k_buffer = state.pop("k", None)
    if dict_class == "JumpReluAutoEncoder":
        foreign = _jumprelu(
            as_float32(_require(state, ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"), source), source)
        )
    else:
        needed = ("encoder.weight", "encoder.bias", "decoder.weight", "b_dec", "threshold")
        t = as_float32(_require(state, needed, source), source)
        foreign = _linear(t, dict_class, trainer, k_buffer, source)
    foreign.hookpoint = from_layer_and_submodule(trainer.get("layer"), trainer.get("submodule_name")) or ""
    foreign.model_name = str(trainer.get("lm_name") or "")
    foreign.details = {"dict_class": dict_class, "trainer_class": trainer.get("trainer_class")}
    if isinstance(trainer.get("saekit"), dict):  # written by saekit's export: the method to restore
        foreign.details["saekit"] = trainer["saekit"]
    for key, want in (("activation_dim", foreign.d_in), ("dict_size", foreign.d_sae)):
        if key in trainer and trainer[key] != want:
            raise FormatError(
                f"{where}: {key}={trainer[key]} but {source} implies {want}; they do not belong together"
            )
    return check_foreign(foreign, str(path))


def _require(state: dict[str, torch.Tensor], names: tuple[str, ...], source: str) -> dict[str, torch.Tensor]:
    missing = [n for n in names if n not in state]
    if missing:
        raise FormatError(f"{source} lacks {missing}; it is not a dictionary_learning SAE of this class")
    return {n: state[n] for n in names}


def _linear(t, dict_class: str, trainer: dict[str, Any], k_buffer, source: str) -> ForeignSae:
    W_enc, W_dec = t["encoder.weight"].t().contiguous(), t["decoder.weight"].t().contiguous()
    if dict_class == "AutoEncoderTopK":
        k = int(k_buffer.item()) if k_buffer is not None else trainer.get("k")
        return ForeignSae("dictionary_learning", "topk", W_enc, t["encoder.bias"], W_dec, t["b_dec"], k=k)
    theta = float(t["threshold"].reshape(-1)[0])
    if t["threshold"].numel() != 1 or theta < 0:
        raise FormatError(
            f"{source}: BatchTopKSAE's threshold is {t['threshold'].tolist()}, not one learned value >= 0 "
            "(was the SAE saved before its threshold was learned?)"
        )
    threshold = torch.full((W_enc.shape[1],), theta)
    k = int(k_buffer.item()) if k_buffer is not None else trainer.get("k")  # BatchTopK's training k, kept
    return ForeignSae(
        "dictionary_learning",
        "jumprelu",
        W_enc,
        t["encoder.bias"],
        W_dec,
        t["b_dec"],
        k=k,
        threshold=threshold,
    )


def _jumprelu(t) -> ForeignSae:
    # JumpReluAutoEncoder computes h = x W_enc + b_enc (apply_b_dec_to_input is False): fold −b_dec W_enc in.
    b_enc = t["b_enc"] + t["b_dec"] @ t["W_enc"]
    return ForeignSae(
        "dictionary_learning", "jumprelu", t["W_enc"], b_enc, t["W_dec"], t["b_dec"], threshold=t["threshold"]
    )


# ---------------------------------------------------------------------------------------- writing


def dictionary_learning_class(sae: ForeignSae) -> str:
    """The class that computes `sae`'s rule: uniform thresholds are BatchTopK's, others JumpReLU's."""
    if sae.rule == "topk":
        return "AutoEncoderTopK"
    uniform = bool((sae.threshold == sae.threshold[0]).all()) and float(sae.threshold[0]) >= 0
    if uniform and isinstance(sae.k, int) and sae.k > 0:  # BatchTopKSAE cannot be built without its k
        return "BatchTopKSAE"
    return "JumpReluAutoEncoder"


def write_dictionary_learning(sae: ForeignSae, directory: Path) -> None:
    if sae.act_scale != 1.0:
        raise FormatError(
            "internal: fold the activation scale before writing a dictionary_learning directory"
        )
    dict_class = dictionary_learning_class(sae)
    if dict_class == "JumpReluAutoEncoder":
        state = {
            "W_enc": sae.W_enc,
            "b_enc": sae.b_enc - sae.b_dec @ sae.W_enc,
            "W_dec": sae.W_dec,
            "b_dec": sae.b_dec,
            "threshold": sae.threshold,
        }
    else:
        theta = float(sae.threshold[0]) if sae.rule == "jumprelu" else -1.0
        state = {
            "k": torch.tensor(sae.k or 0, dtype=torch.int32),
            "threshold": torch.tensor(theta, dtype=torch.float32),
            "decoder.weight": sae.W_dec.t(),
            "encoder.weight": sae.W_enc.t(),
            "encoder.bias": sae.b_enc,
            "b_dec": sae.b_dec,
        }
    state = {n: t.detach().contiguous().cpu() for n, t in state.items()}
    torch.save(state, str(directory / WEIGHTS_FILE))
    layer = layer_and_submodule(sae.hookpoint)
    trainer = {
        "trainer_class": {"AutoEncoderTopK": "TopKTrainer", "BatchTopKSAE": "BatchTopKTrainer"}.get(
            dict_class, "JumpReluTrainer"
        ),
        "dict_class": dict_class,
        "activation_dim": sae.d_in,
        "dict_size": sae.d_sae,
        "k": sae.k,
        "layer": layer[0] if layer else None,
        "lm_name": sae.model_name,
        "submodule_name": layer[1] if layer else sae.hookpoint,
        "exported_by": "saekit",
        **({"saekit": sae.details["saekit"]} if "saekit" in sae.details else {}),
    }
    (directory / CONFIG_FILE).write_text(json.dumps({"trainer": trainer}, indent=2) + "\n")
