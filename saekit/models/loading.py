"""Model loading by name: the embedded SmolLM2, the tiny test model, a local HF directory or a hub id.

Every loaded model is in eval mode with frozen parameters, and remembers a stable id (for manifests and
checkpoint configs) and the string it was loaded from (for error messages that suggest a command).

Names are resolved without touching the network, in this order: `embedded` and `tiny`; an existing local
directory; a hub id (`org/name`), or a bare name that is already in the local Hugging Face cache. Anything
else (a typo such as `tinny`, a path that does not exist) fails at once, naming the close built-in names.

Offline is saekit's default (`saekit.models.offline`): unless the user set HF_HUB_OFFLINE or
TRANSFORMERS_OFFLINE, both are set to 1 before transformers is imported, as the Makefile does. A hub id then
loads only from the local Hugging Face cache, and `HF_HUB_OFFLINE=0` opts in to downloads (after a short TCP
probe, so a black-holed network fails in seconds). Chosen so that a typo or a stale config never makes a
command or a test wait on the network, and because every other model source is local anyway.

    model = load_model("embedded")          # SmolLM2-135M-Instruct, offline
    model = load_model("/data/hf/gpt2")     # any local Hugging Face checkpoint
    model_id(model)                         # "embedded:SmolLM2-135M-Instruct@0.1.2"
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import socket
import time
import weakref
from pathlib import Path
from urllib.parse import urlparse

from transformer_lens.model_bridge import TransformerBridge

from saekit.errors import ModelLoadError
from saekit.models.offline import apply_offline_default, offline_mode

logger = logging.getLogger(__name__)

# Keyed weakly so a registry entry never keeps a 500 MB model alive.
_IDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_SPECS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_PROBE_TIMEOUT_S = 3.0
_LOCAL_HINT = "download it once elsewhere and pass the directory instead (model=/path/to/hf_dir)"
BUILTIN_MODELS = ("embedded", "tiny")
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_KINDS = "embedded, tiny, a local Hugging Face directory, or a hub id org/name"


def load_model(name: str = "embedded", *, device: str = "cpu") -> TransformerBridge:
    """Load `name`: "embedded", "tiny", a local Hugging Face directory, or a hub id (see the module doc)."""
    apply_offline_default()
    start = time.perf_counter()
    kind, target = resolve_model_name(name)
    if kind == "embedded":
        model, ident = _load_embedded(device)
    elif kind == "tiny":
        from saekit.models.tiny import boot_tiny

        model, ident = boot_tiny(device=device), "tiny"
    elif kind == "dir":
        model, ident = _load_local_dir(Path(target), device), Path(target).resolve().name
    else:
        model, ident = _load_hub(target, device), target
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    _IDS[model] = ident
    _SPECS[model] = name
    logger.info("loaded model %s on %s in %.1f s", ident, device, time.perf_counter() - start)
    return model


def resolve_model_name(name: str) -> tuple[str, str]:
    """(kind, target) of a model name, kind one of embedded/tiny/dir/hub, found without network access.

    A name that is none of these raises ModelLoadError, suggesting the close built-in names.
    """
    if not isinstance(name, str) or not name.strip():
        raise ModelLoadError(f"model name {name!r} is empty; use one of: {_KINDS}")
    name = name.strip()
    if name in BUILTIN_MODELS:
        return name, name
    path = Path(name).expanduser()
    if path.is_dir():
        return "dir", str(path)
    if path.exists():
        raise ModelLoadError(
            f"model {name!r} is a file, not a model directory; pass the directory holding config.json "
            "(written by save_pretrained), or model=embedded / model=tiny"
        )
    if _looks_like_path(name):
        raise ModelLoadError(
            f"model directory {name} does not exist; pass an existing Hugging Face directory, or one of: "
            f"{', '.join(BUILTIN_MODELS)}"
        )
    if _HUB_ID.fullmatch(name) and ".." not in name:
        return "hub", name
    if _cached_snapshot(name) is not None:  # a legacy hub name without an org (e.g. gpt2), cached locally
        return "hub", name
    raise ModelLoadError(f"unknown model {name!r}: {_suggestion(name)}")


def model_id(model: TransformerBridge) -> str:
    """Stable identifier: "embedded:SmolLM2-135M-Instruct@<wheel version>", "tiny", a dir or hub name."""
    if model in _IDS:
        return _IDS[model]
    return str(getattr(model.cfg, "model_name", None) or type(model).__name__)


def load_spec(model: TransformerBridge) -> str:
    """The string `load_model` was called with (falls back to the model id)."""
    return _SPECS.get(model, model_id(model))


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1 or name.endswith("/")


def _suggestion(name: str) -> str:
    close = difflib.get_close_matches(name.lower(), BUILTIN_MODELS, n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}? (models: {_KINDS})"
    return (
        f"not a built-in model ({', '.join(BUILTIN_MODELS)}), not an existing directory and not a hub id "
        "(org/name); pass one of those"
    )


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
    if offline_mode():
        return _load_cached_hub(name, device)
    if not _hub_reachable():
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


def _load_cached_hub(name: str, device: str) -> TransformerBridge:
    """Offline: the snapshot in the local HF cache, loaded as a directory, so that no code path reaches
    the network even where transformers was imported before offline mode was set."""
    snapshot = _cached_snapshot(name)
    if snapshot is None:
        raise ModelLoadError(
            f"model {name!r} is not a local directory nor in the local HF cache, and the Hugging Face hub "
            f"is off (HF_HUB_OFFLINE is set; saekit's default); {_LOCAL_HINT}, use model=embedded, or set "
            "HF_HUB_OFFLINE=0 to download it"
        )
    try:
        return TransformerBridge.boot_transformers(str(snapshot), device=device)
    except Exception as err:  # a partial snapshot raises many unrelated types
        raise ModelLoadError(
            f"the local HF cache holds an incomplete copy of {name!r} ({type(err).__name__}: {err}); "
            f"{_LOCAL_HINT}, or set HF_HUB_OFFLINE=0 to download it again"
        ) from err


def _cached_snapshot(name: str) -> Path | None:
    """The local HF cache's snapshot directory of `name` (it holds config.json), else None."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "config.json")
    except Exception:  # an invalid repo id is simply "not cached"
        return None
    return Path(found).parent if isinstance(found, str) else None


def _hub_reachable() -> bool:
    """A short TCP connect to the hub, so a black-holed network fails in seconds instead of hanging."""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname or "huggingface.co", port), _PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False
