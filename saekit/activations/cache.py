"""Reading an activation cache: one directory per hook point holding `manifest.json` + safetensors shards.

Layout (format_version 1), written by `saekit.activations.writer.CacheWriter`:

    <root>/<hookpoint>/manifest.json
    <root>/<hookpoint>/shard-00000.safetensors   acts [N, d_in], token_ids [N], seq_ids [N], positions [N],
                                                 optional grads [N, d_in]

Integrity: `open_cache` checks that every shard listed in the manifest exists with the recorded byte size
(cheap, catches missing and truncated files at once). `load_shard` hashes the exact bytes it parses and
compares them with the manifest's sha256 on *every* load, so a corrupt shard can never be trained on; the
hash costs about as much as reading the file, which the load does anyway. `verify()` hashes all shards.

    cache = open_cache("runs/cache", "blocks.9.hook_resid_post")
    x = cache.rows(65_536)                       # first rows, fp32, for normalisation / init
    shard = cache.load_shard(0)                  # {"acts": ..., "token_ids": ..., ...}
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from torch import Tensor

from saekit.errors import CacheError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
RESUME_HINT = "re-run `saekit collect` with the same config: it verifies the shards and resumes"
_REQUIRED_KEYS = ("format_version", "hookpoint", "d_in", "dtype", "shards", "num_tokens", "has_grads")


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def read_manifest(directory: Path) -> dict[str, Any]:
    """Parse `<directory>/manifest.json`, raising CacheError (with the fix) if absent or malformed: every
    key the readers use is type-checked here, so a damaged manifest never surfaces as a TypeError later."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise CacheError(
            f"no activation cache at {directory} ({MANIFEST_NAME} missing); run `saekit collect`"
        )
    try:
        manifest = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise CacheError(f"{path} is not valid JSON ({err}); {_rebuild_hint(directory)}") from None
    except OSError as err:
        raise CacheError(f"cannot read {path} ({err.strerror}); check its permissions") from None
    check_manifest(path, manifest)
    return manifest


def _rebuild_hint(directory: Path) -> str:
    return f"delete {directory} and re-run `saekit collect` to rebuild it"


def check_manifest(path: Path, manifest: Any) -> None:
    """CacheError naming the first missing or mistyped key of a parsed manifest (see `_MANIFEST_KEYS`)."""
    directory = Path(path).parent
    if not isinstance(manifest, dict):
        raise CacheError(
            f"{path} holds a JSON {type(manifest).__name__}, not a manifest object; "
            f"{_rebuild_hint(directory)}"
        )
    missing = [key for key in _REQUIRED_KEYS if key not in manifest]
    if missing:
        raise CacheError(
            f"{path} lacks {missing}; it was not written by saekit collect. {_rebuild_hint(directory)}"
        )
    version = manifest["format_version"]
    if not _is_int(version) or version < 1:
        _bad_key(path, "format_version", "a positive integer", version)
    if version > FORMAT_VERSION:
        raise CacheError(
            f"{path} has cache format {version}, newer than this saekit reads ({FORMAT_VERSION}); "
            "upgrade saekit"
        )
    for key, (ok, expected) in _MANIFEST_KEYS.items():
        if key in manifest and not ok(manifest[key]):
            _bad_key(path, key, expected, manifest[key])
    for index, entry in enumerate(manifest["shards"]):
        if not isinstance(entry, dict):
            _bad_key(path, f"shards[{index}]", "an object", entry)
        for key, (ok, expected) in _SHARD_KEYS.items():
            if (key in entry or key in _REQUIRED_SHARD_KEYS) and not ok(entry.get(key)):
                _bad_key(path, f"shards[{index}].{key}", expected, entry.get(key))
    listed = sum(entry["tokens"] for entry in manifest["shards"])
    if listed != manifest["num_tokens"]:
        raise CacheError(
            f"{path}: key 'num_tokens' is {manifest['num_tokens']} but the shards hold {listed} rows; "
            f"{_rebuild_hint(directory)}"
        )
    mean = (manifest.get("norm_stats") or {}).get("mean")
    if mean is not None and (not isinstance(mean, list) or len(mean) != manifest["d_in"]):
        _bad_key(path, "norm_stats.mean", f"a list of d_in={manifest['d_in']} numbers", mean)


def _bad_key(path: Path, key: str, expected: str, value: Any) -> None:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    raise CacheError(
        f"{path}: key '{key}' must be {expected}, got {shown}; the manifest is damaged or was not written by "
        f"saekit -- {_rebuild_hint(Path(path).parent)}"
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_count(value: Any) -> bool:
    return _is_int(value) and value >= 0


def _optional(check: Any) -> Any:
    return lambda value: value is None or check(value)


def _is_plain_file_name(value: Any) -> bool:
    # a shard name that walks out of the cache directory (../x, /etc/x) is never one saekit wrote
    return isinstance(value, str) and value not in ("", ".", "..") and "/" not in value and "\\" not in value


_DTYPES = ("float32", "float16", "bfloat16")
_MANIFEST_KEYS: dict[str, tuple[Any, str]] = {
    "hookpoint": (lambda v: isinstance(v, str) and bool(v), "a hook name (string)"),
    "d_in": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "dtype": (lambda v: v in _DTYPES, f"one of {list(_DTYPES)}"),
    "grads_dtype": (lambda v: v in _DTYPES, f"one of {list(_DTYPES)}"),
    "shards": (lambda v: isinstance(v, list), "a list of shard entries"),
    "num_tokens": (_is_count, "an integer >= 0"),
    "has_grads": (lambda v: isinstance(v, bool), "true or false"),
    "complete": (lambda v: isinstance(v, bool), "true or false"),
    "shard_tokens": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "context_length": (_optional(lambda v: _is_int(v) and v >= 2), "an integer >= 2"),
    "collect_config": (_optional(lambda v: isinstance(v, dict)), "an object (or null)"),
    "norm_stats": (_optional(lambda v: isinstance(v, dict)), "an object (or null)"),
    "excluded_positions": (_optional(lambda v: isinstance(v, dict)), "an object (or null)"),
    "num_sequences": (_optional(_is_count), "an integer >= 0 (or null)"),
    "next_sequence": (_optional(_is_count), "an integer >= 0 (or null)"),
    "first_sequence": (_optional(_is_count), "an integer >= 0 (or null)"),
    "model_id": (_optional(lambda v: isinstance(v, str)), "a string"),
}
_REQUIRED_SHARD_KEYS = ("file", "tokens", "sha256")
_SHARD_KEYS: dict[str, tuple[Any, str]] = {
    "file": (_is_plain_file_name, "a file name inside the cache directory"),
    "tokens": (_is_count, "an integer >= 0"),
    "sha256": (lambda v: isinstance(v, str) and len(v) == 64, "a sha256 hex digest (64 characters)"),
    "bytes": (_optional(_is_count), "an integer >= 0"),
    "first_seq_id": (_optional(_is_count), "an integer >= 0"),
}


class ActivationCache:
    """Read access to the cache of one hook point. Build it with `open_cache`."""

    def __init__(self, directory: Path, manifest: dict[str, Any]) -> None:
        self.directory = Path(directory)
        self.manifest = manifest

    # ------------------------------------------------------------------------------ manifest views
    @property
    def hookpoint(self) -> str:
        return self.manifest["hookpoint"]

    @property
    def d_in(self) -> int:
        return int(self.manifest["d_in"])

    @property
    def num_tokens(self) -> int:
        return int(self.manifest["num_tokens"])

    @property
    def num_shards(self) -> int:
        return len(self.manifest["shards"])

    @property
    def shard_sizes(self) -> list[int]:
        return [int(entry["tokens"]) for entry in self.manifest["shards"]]

    @property
    def has_grads(self) -> bool:
        return bool(self.manifest["has_grads"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete", False))

    @property
    def norm_stats(self) -> dict[str, Any]:
        """{"rows", "mean_norm", "mean_squared_norm", "mean": [d_in]}, accumulated in fp64 at write time."""
        return self.manifest["norm_stats"]

    def shard_path(self, index: int) -> Path:
        return self.directory / self.manifest["shards"][index]["file"]

    # ------------------------------------------------------------------------------ integrity
    def check_files(self) -> None:
        """Cheap check (stat only): every shard exists with the byte size the manifest recorded."""
        for index, entry in enumerate(self.manifest["shards"]):
            path = self.shard_path(index)
            if not path.is_file():
                raise CacheError(f"shard {path} is missing from the cache; {RESUME_HINT}")
            expected = entry.get("bytes")
            if expected is not None and path.stat().st_size != expected:
                raise CacheError(
                    f"shard {path} has {path.stat().st_size} bytes, the manifest says {expected} "
                    f"(truncated or replaced); {RESUME_HINT}"
                )

    def verify(self) -> None:
        """Hash every shard and compare with the manifest; raise CacheError naming the first bad one."""
        self.check_files()
        for index in range(self.num_shards):
            self._read_verified(index)
        logger.info("verified %d shards (%d tokens) of %s", self.num_shards, self.num_tokens, self.directory)

    def _read_verified(self, index: int) -> bytes:
        if not 0 <= index < self.num_shards:
            raise IndexError(f"shard {index} out of range: the cache has {self.num_shards} shards")
        path = self.shard_path(index)
        try:
            blob = path.read_bytes()
        except OSError as err:
            raise CacheError(f"cannot read shard {path} ({err}); {RESUME_HINT}") from None
        if hashlib.sha256(blob).hexdigest() != self.manifest["shards"][index]["sha256"]:
            raise CacheError(
                f"shard {path} does not match its sha256 in the manifest (corrupt); {RESUME_HINT}"
            )
        return blob

    # ------------------------------------------------------------------------------ data
    def load_shard(self, index: int) -> dict[str, Tensor]:
        """Tensors of shard `index`, hash-verified and shape-checked against the manifest."""
        blob = self._read_verified(index)
        path = self.shard_path(index)
        try:
            tensors = load_safetensors_bytes(blob)
        except (SafetensorError, ValueError, RuntimeError) as err:
            raise CacheError(f"shard {path} is unreadable ({err}); {RESUME_HINT}") from None
        self._check_shapes(index, tensors)
        return tensors

    def _check_shapes(self, index: int, tensors: dict[str, Tensor]) -> None:
        rows = int(self.manifest["shards"][index]["tokens"])
        expected: dict[str, tuple[int, ...]] = {
            "acts": (rows, self.d_in),
            "token_ids": (rows,),
            "seq_ids": (rows,),
            "positions": (rows,),
        }
        if self.has_grads:
            expected["grads"] = (rows, self.d_in)
        for name, shape in expected.items():
            got = tuple(tensors[name].shape) if name in tensors else None
            if got != shape:
                raise CacheError(
                    f"shard {self.shard_path(index)}: tensor {name!r} has shape {got}, the manifest implies "
                    f"{shape}; {RESUME_HINT}"
                )
        if str(tensors["acts"].dtype) != f"torch.{self.manifest['dtype']}":
            raise CacheError(
                f"shard {self.shard_path(index)} stores {tensors['acts'].dtype}, the manifest says "
                f"{self.manifest['dtype']}; {RESUME_HINT}"
            )

    def rows(self, n: int) -> Float[Tensor, "n d_in"]:
        """The first min(n, num_tokens) rows of acts, in cache order, as fp32."""
        parts: list[Tensor] = []
        remaining = min(n, self.num_tokens)
        for index in range(self.num_shards):
            if remaining <= 0:
                break
            acts = self.load_shard(index)["acts"][:remaining].float()
            parts.append(acts)
            remaining -= acts.shape[0]
        if not parts:
            return torch.zeros(0, self.d_in)
        return torch.cat(parts)

    def __repr__(self) -> str:
        return (
            f"ActivationCache({self.directory}, hookpoint={self.hookpoint!r}, tokens={self.num_tokens}, "
            f"d_in={self.d_in}, shards={self.num_shards}, grads={self.has_grads})"
        )


def list_hookpoints(root: Path) -> list[str]:
    """Hook points cached under `root` (subdirectories holding a manifest)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / MANIFEST_NAME).is_file())


def open_cache(
    path: str | Path, hookpoint: str | None = None, *, allow_incomplete: bool = False
) -> ActivationCache:
    """Open the cache at `path`: a hook point directory, or a root holding one directory per hook point.

    With several hook points under the root, `hookpoint` must say which. An incomplete cache (collection
    interrupted) raises CacheError unless `allow_incomplete`.
    """
    path = Path(path)
    if (path / MANIFEST_NAME).is_file():
        directory = path
    else:
        available = list_hookpoints(path)
        if hookpoint is not None:
            directory = path / hookpoint
            if not (directory / MANIFEST_NAME).is_file():
                hint = f"cached hook points here: {available}" if available else "run `saekit collect` first"
                raise CacheError(f"no cache for hook point {hookpoint!r} under {path}; {hint}")
        elif len(available) == 1:
            directory = path / available[0]
        elif available:
            raise CacheError(f"{path} holds caches for several hook points {available}; pass hookpoint=")
        else:
            raise CacheError(f"no activation cache at {path}; run `saekit collect` with out_dir={path}")
    manifest = read_manifest(directory)
    if hookpoint is not None and manifest["hookpoint"] != hookpoint:
        raise CacheError(f"{directory} caches {manifest['hookpoint']!r}, not {hookpoint!r}")
    cache = ActivationCache(directory, manifest)
    if not cache.complete and not allow_incomplete:
        raise CacheError(
            f"the cache at {directory} is incomplete (collection was interrupted); {RESUME_HINT}"
        )
    cache.check_files()
    return cache
