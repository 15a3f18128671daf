"""Config keys for `saekit <stage> --help`: every field of a stage config with its default and the docstring
written under it (read from the source, so the docs live in one place: the dataclass).

    rows = describe_fields(TrainConfig)        # [("sae.method", "topk", "SAE method: ..."), ...]
    print(format_help(rows))
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
from typing import Any

import yaml


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (and of its dataclass bases), read from the source."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):  # no source (frozen app, REPL class): no docs
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:], strict=False):
            documented = isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant)
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and documented:
                docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def describe_fields(cls: type, prefix: str = "", skip: tuple[str, ...] = ()) -> list[tuple[str, str, str]]:
    """(dotted key, default, doc) for every field of `cls`, nested dataclass sections expanded."""
    rows = []
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if not f.init or f.name in skip:
            continue
        default = _default_of(f)
        if dataclasses.is_dataclass(default) and not isinstance(default, type):
            rows += describe_fields(type(default), f"{prefix}{f.name}.")
            continue
        rows.append((f"{prefix}{f.name}", _show(default), docs.get(f.name, "")))
    return rows


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return "(required)"


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        value = list(value)
    return (
        "null"
        if value is None
        else yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    )


def format_help(rows: list[tuple[str, str, str]], width: int = 110) -> str:
    """Aligned `key = default  doc` lines, the doc wrapped under the key."""
    key_width = min(36, max((len(k) + len(d) + 3 for k, d, _ in rows), default=10))
    lines = []
    for key, default, doc in rows:
        head = f"  {key} = {default}"
        wrapped = textwrap.wrap(doc, width - key_width - 4) or [""]
        lines.append(f"{head:<{key_width + 2}}  {wrapped[0]}".rstrip())
        lines += [f"{'':<{key_width + 2}}  {more}" for more in wrapped[1:]]
    return "\n".join(lines)
