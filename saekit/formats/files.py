"""Reading weight and config files of other tools without ever unpickling arbitrary objects.

tensors = read_safetensors(path / "sae_weights.safetensors")
cfg = read_json(path / "cfg.json")
state = read_torch_state(path / "ae.pt")        # torch.load(weights_only=True) only
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from saekit.formats.spec import FormatError


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`; FormatError when missing or not a JSON object."""
    if not path.is_file():
        raise FormatError(f"{path} is missing; point at the directory that holds it")
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise FormatError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise FormatError(f"{path} is not a JSON object")
    return raw


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """Every tensor of a safetensors file (on the CPU); FormatError for a missing, truncated or other file."""
    if not path.is_file():
        raise FormatError(f"{path} is missing; point at the directory that holds the SAE's weights")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise FormatError(
            f"{path} is not a readable safetensors file ({str(err).splitlines()[0]}); is it a pickle or "
            "truncated? Re-save the weights as safetensors"
        ) from None


def read_torch_state(path: Path) -> dict[str, Tensor]:
    """A flat {name: tensor} state dict saved with torch.save, loaded with weights_only=True: a pickle that
    would run code or build objects is refused, never executed."""
    if not path.is_file():
        raise FormatError(f"{path} is missing; point at the directory that holds ae.pt")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FormatError(
            f"{path} is not a plain tensor state dict (torch.load with weights_only=True refused it: "
            f"{first[:160]}); saekit never unpickles objects — re-save it with torch.save(model.state_dict())"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise FormatError(f"{path} does not hold a {{name: tensor}} state dict")
    return dict(state)
