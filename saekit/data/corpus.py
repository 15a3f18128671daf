"""Text corpora: one `iter_texts(source)` for every accepted format, plus a content fingerprint.

Accepted sources:
- `"embedded"`: the offline corpus's training split; `"embedded:heldout"`: its held-out split (see
  `saekit.data.embedded_corpus`; collection refuses the held-out split);
- a `.txt` file: the whole file is one document;
- a directory: every `*.txt` and `*.md` file below it (recursively, sorted by relative path), one document
  each;
- a `.jsonl` file: one JSON object per line, the document under `text_field`.
Blank documents are skipped. Order is deterministic, so a corpus + skip count names the same text.

    for text in iter_texts("embedded"): ...
    fingerprint = corpus_fingerprint("data/notes.jsonl", text_field="body")   # for manifests
    split = corpus_split_info("embedded")     # the held-out split rule and sizes, or None
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from saekit.data.embedded_corpus import (
    embedded_corpus_info,
    embedded_corpus_path,
    embedded_documents,
    split_of_corpus,
)
from saekit.errors import CorpusError

logger = logging.getLogger(__name__)

_ACCEPTED = (
    "'embedded' (the offline corpus, training split), a .txt file, a directory of .txt/.md files, "
    'or a .jsonl file with one {"text": ...} object per line'
)
_fingerprints: dict[tuple, str] = {}


def iter_texts(source: str, text_field: str = "text") -> Iterator[str]:
    """Yield the documents of `source` in a fixed order (see the module docstring for formats)."""
    split = split_of_corpus(source)
    if split is not None:
        yield from embedded_documents(split)
        return
    path = Path(source).expanduser()
    if path.is_dir():
        yield from _iter_directory(path)
    elif path.is_file() and path.suffix == ".jsonl":
        yield from _iter_jsonl(path, text_field)
    elif path.is_file() and path.suffix in (".txt", ".md"):
        text = path.read_text(encoding="utf-8", errors="replace")
        if text.strip():
            yield text
    elif path.is_file():
        raise CorpusError(f"corpus file {path} has an unsupported extension {path.suffix!r}; use {_ACCEPTED}")
    else:
        raise CorpusError(f"corpus {source!r} does not exist; pass {_ACCEPTED}")


def corpus_fingerprint(source: str, text_field: str = "text") -> str:
    """sha256 over the corpus documents (length-prefixed, so boundaries count); cached per process.

    The cache key includes file sizes and modification times, so an edited corpus is re-hashed.
    """
    key = (source, text_field, _stat_signature(source))
    if key not in _fingerprints:
        digest = hashlib.sha256()
        for text in iter_texts(source, text_field):
            data = text.encode("utf-8")
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
        _fingerprints[key] = digest.hexdigest()
    return _fingerprints[key]


def corpus_split_info(source: str) -> dict[str, Any] | None:
    """For the embedded corpus: which split `source` names plus the split rule and sizes (recorded in
    cache manifests, so evaluation can prove its text is disjoint from training); None otherwise."""
    split = split_of_corpus(source)
    if split is None:
        return None
    return {"split": split, **embedded_corpus_info()}


def _iter_directory(root: Path) -> Iterator[str]:
    files = sorted(
        (p for p in root.rglob("*") if p.is_file() and p.suffix in (".txt", ".md")),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    if not files:
        raise CorpusError(f"corpus directory {root} holds no .txt or .md files; add some or pass {_ACCEPTED}")
    for file in files:
        text = file.read_text(encoding="utf-8", errors="replace")
        if text.strip():
            yield text


def _iter_jsonl(path: Path, text_field: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise CorpusError(
                    f"{path} line {number} is not valid JSON ({err.msg}); each line must be one JSON object"
                ) from None
            if not isinstance(record, dict):
                raise CorpusError(f"{path} line {number} is a JSON {type(record).__name__}, not an object")
            if text_field not in record:
                raise CorpusError(
                    f"{path} line {number} has no field {text_field!r} (fields: {sorted(record)}); "
                    "set text_field to the field holding the text"
                )
            text = record[text_field]
            if not isinstance(text, str):
                raise CorpusError(
                    f"{path} line {number}: field {text_field!r} is a "
                    f"{type(text).__name__}, expected a string"
                )
            if text.strip():
                yield text


def _stat_signature(source: str) -> tuple:
    """Cheap change detector for the fingerprint cache: (path, size, mtime) of every file involved."""
    if split_of_corpus(source) is not None:
        return (str(embedded_corpus_path()),)
    path = Path(source).expanduser()
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files if p.is_file())
