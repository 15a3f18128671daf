"""Model loading by name: the embedded SmolLM2, the tiny test model, a local HF directory or a hub name.

Every loaded model is in eval mode with frozen parameters, and remembers a stable id (for manifests and
checkpoint configs) and the string it was loaded from (for error messages that suggest a command).

    model = load_model("embedded")          # SmolLM2-135M-Instruct, offline
    model = load_model("/data/hf/gpt2")     # any local Hugging Face checkpoint
    model_id(model)                         # "embedded:SmolLM2-135M-Instruct@0.1.2"
"""

from __future__ import annotations

import logging
import os
import socket
import time
import weakref
from pathlib import Path
from urllib.parse import urlparse

from transformer_lens.model_bridge import TransformerBridge

from saekit.errors import ModelLoadError

logger = logging.getLogger(__name__)

# Keyed weakly so a registry entry never keeps a 500 MB model alive.
_IDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_SPECS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_PROBE_TIMEOUT_S = 3.0
_LOCAL_HINT = "download it once elsewhere and pass the directory instead (model=/path/to/hf_dir)"


def load_model(name: str = "embedded", *, device: str = "cpu") -> TransformerBridge:
    """Load `name`: "embedded", "tiny", a local Hugging Face directory, or a hub name (needs network)."""
    start = time.perf_counter()
    if name == "embedded":
        model, ident = _load_embedded(device)
    elif name == "tiny":
        from saekit.models.tiny import boot_tiny

        model, ident = boot_tiny(device=device), "tiny"
    elif Path(name).expanduser().is_dir():
        model, ident = _load_local_dir(Path(name).expanduser(), device), Path(name).resolve().name
    else:
        model, ident = _load_hub(name, device), name
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    _IDS[model] = ident
    _SPECS[model] = name
    logger.info("loaded model %s on %s in %.1f s", ident, device, time.perf_counter() - start)
    return model


def model_id(model: TransformerBridge) -> str:
    """Stable identifier: "embedded:SmolLM2-135M-Instruct@<wheel version>", "tiny", a dir or hub name."""
    if model in _IDS:
        return _IDS[model]
    return str(getattr(model.cfg, "model_name", None) or type(model).__name__)


def load_spec(model: TransformerBridge) -> str:
    """The string `load_model` was called with (falls back to the model id)."""
    return _SPECS.get(model, model_id(model))


def _load_embedded(device: str) -> tuple[TransformerBridge, str]:
    from saekit.models.embedded import MODEL_NAME, embedded_checkpoint_dir, embedded_version

    checkpoint = embedded_checkpoint_dir()
    logger.info("loading embedded model from %s", checkpoint)
    model = TransformerBridge.boot_transformers(str(checkpoint), device=device)
    return model, f"embedded:{MODEL_NAME}@{embedded_version()}"


def _load_local_dir(path: Path, device: str) -> TransformerBridge:
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"{path} is a directory but not a Hugging Face checkpoint (no config.json); pass a directory "
            "written by save_pretrained, or one of: embedded, tiny"
        )
    try:
        return TransformerBridge.boot_transformers(str(path), device=device)
    except (OSError, ValueError, KeyError) as err:
        raise ModelLoadError(f"could not load the checkpoint in {path}: {err}") from err


def _load_hub(name: str, device: str) -> TransformerBridge:
    if _offline_env():
        # Offline mode makes no network call, so a model already in the local HF cache still loads.
        if not _in_hf_cache(name):
            raise ModelLoadError(
                f"model {name!r} is not a local directory and the Hugging Face hub is unreachable "
                f"(HF_HUB_OFFLINE is set) and it is not in the local HF cache; {_LOCAL_HINT}, "
                "or use model=embedded"
            )
    elif not _hub_reachable():
        raise ModelLoadError(
            f"model {name!r} is not a local directory and the Hugging Face hub is unreachable; "
            f"{_LOCAL_HINT}, or use model=embedded"
        )
    try:
        return TransformerBridge.boot_transformers(name, device=device)
    except Exception as err:  # hub/transformers raise many unrelated types; all mean "could not load"
        raise ModelLoadError(
            f"could not load {name!r} from the Hugging Face hub ({type(err).__name__}: {err}); check the "
            f"name, or {_LOCAL_HINT}"
        ) from err


def _offline_env() -> bool:
    flags = (os.environ.get(var, "").strip().lower() for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(flag in ("1", "true", "yes", "on") for flag in flags)


def _in_hf_cache(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # an invalid repo id is simply "not cached"
        return False


def _hub_reachable() -> bool:
    """A short TCP connect to the hub, so a black-holed network fails in seconds instead of hanging."""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname or "huggingface.co", port), _PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False
