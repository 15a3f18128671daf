"""Which tool wrote a directory, and reading/writing by format name.

A directory may hold one SAE (its files directly) or several (a sparsify run: one subdirectory per hook
point; a multi-SAE SAELens checkpoint: one subdirectory per SAE); `select` names the subdirectory.

    detect_format(Path("runs/x/final"))                      # "saekit"
    read_foreign(Path("sparsify_run"), "auto", select="layers.3")
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from saekit.formats.dictionary_learning import (
    is_dictionary_learning_dir,
    read_dictionary_learning,
    write_dictionary_learning,
)
from saekit.formats.saelens import is_saelens_dir, read_saelens, write_saelens
from saekit.formats.sparsify import is_sparsify_dir, read_sparsify, write_sparsify
from saekit.formats.spec import FORMATS, ForeignSae, FormatError, json_beside

READERS: dict[str, Callable[[Path], ForeignSae]] = {
    "saelens": read_saelens,
    "sparsify": read_sparsify,
    "dictionary_learning": read_dictionary_learning,
}
WRITERS: dict[str, Callable[[ForeignSae, Path], None]] = {
    "saelens": write_saelens,
    "sparsify": write_sparsify,
    "dictionary_learning": write_dictionary_learning,
}
_DETECTORS: dict[str, Callable[[Path], bool]] = {
    "saelens": is_saelens_dir,
    "sparsify": is_sparsify_dir,
    "dictionary_learning": is_dictionary_learning_dir,
}


def is_saekit_dir(path: Path) -> bool:
    """A checkpoint written by `Sae.save`: cfg.json with `d_in` and an `sae` section."""
    raw = json_beside(path, "cfg.json")
    return raw is not None and "sae" in raw and "d_in" in raw


def detect_format(path: Path) -> str | None:
    """ "saekit", a name in FORMATS for a directory holding one SAE of that tool, else None."""
    path = Path(path)
    if is_saekit_dir(path):
        return "saekit"
    for name, detector in _DETECTORS.items():
        if detector(path):
            return name
    return None


def sae_choices(path: Path) -> dict[str, str]:
    """{subdirectory: format} for a directory holding several SAEs (a sparsify run, a multi-SAE save)."""
    path = Path(path)
    if not path.is_dir():
        return {}
    found = {}
    for sub in sorted(p for p in path.iterdir() if p.is_dir()):
        fmt = detect_format(sub)
        if fmt in FORMATS:
            found[sub.name] = fmt
    return found


def read_foreign(path: Path, fmt: str = "auto", select: str | None = None) -> ForeignSae:
    """The one SAE at `path` (or its subdirectory `select`), read as `fmt` ("auto": detected)."""
    path = Path(path)
    if not path.exists():
        raise FormatError(f"{path} does not exist; point at the directory holding the SAE's files")
    if fmt != "auto" and fmt not in READERS:
        raise FormatError(f"unknown format {fmt!r}; choose one of {list(FORMATS)} or auto")
    if select is not None:
        path = _selected(path, select)
    detected = detect_format(path)
    if detected is None or detected == "saekit":
        choices = sae_choices(path)
        if len(choices) == 1:
            path, detected = path / next(iter(choices)), next(iter(choices.values()))
        elif choices:
            raise FormatError(
                f"{path} holds several SAEs {sorted(choices)}; choose one "
                "(select=NAME, `--sae NAME` on the CLI)"
            )
        elif detected == "saekit":
            raise FormatError(f"{path} is a saekit checkpoint already; load it with Sae.load")
        else:
            hint = "" if fmt == "auto" else f" of {fmt}"
            raise FormatError(
                f"{path} holds no SAE{hint} that saekit recognises: expected cfg.json + "
                "sae_weights.safetensors (SAELens), cfg.json + sae.safetensors (sparsify) or config.json + "
                "ae.pt (dictionary_learning)"
            )
    if fmt != "auto" and detected != fmt:
        raise FormatError(f"{path} looks like a {detected} SAE, not {fmt}; pass --from {detected} (or auto)")
    return READERS[detected](path)


def _selected(path: Path, select: str) -> Path:
    chosen = path / select
    if not chosen.is_dir() or Path(select).is_absolute() or ".." in Path(select).parts:
        raise FormatError(
            f"{path} has no SAE {select!r}; choose one of {sorted(sae_choices(path)) or 'none'}"
        )
    return chosen


def write_foreign(sae: ForeignSae, fmt: str, directory: Path) -> None:
    """Write `sae` as `fmt` into `directory` (an empty staging directory the caller moves into place)."""
    if fmt not in WRITERS:
        raise FormatError(f"unknown format {fmt!r}; choose one of {list(FORMATS)}")
    WRITERS[fmt](sae, directory)
