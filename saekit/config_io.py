"""The one config machinery every stage shares: YAML + dotted ``key=value`` overrides → frozen dataclasses.

Stage configs (`saekit.config`) and method sections (`saekit.sae.methods`) are plain frozen dataclasses
with a docstring under each field. This module turns mappings into them (type coercion, did-you-mean
errors for unknown keys), parses overrides, and patches files written by older saekit versions
(`saekit.config_help` lists the keys for `--help`).

    cfg = load_config(TrainConfig, "configs/topk.yaml", ["sae.k=64", "lr=3e-4"])
    save_config(cfg, run_dir / "config.yaml")

Hooks a dataclass may define (classmethods), used by polymorphic sections such as `SaeConfig`:
- `_normalise_raw(raw) -> raw`: rewrite the incoming mapping first (e.g. route shorthand keys);
- `_field_types(raw) -> {name: type}`: field types that depend on other values (e.g. the method's section).
A library (dacite, cattrs, pydantic) was considered for the mapping; none keeps the did-you-mean errors,
YAML's "3e-4"-as-string quirk and these hooks without as much glue as the ~120 lines below.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from saekit.errors import ConfigError
from saekit.io import atomic_write_text

FORMAT_VERSION = 2
"""Version of config.yaml. 1: flat `sae` section with `activation` + `objective`; 2: `sae.method` + params."""


# ---------------------------------------------------------------------------------------- overrides


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """`["sae.k=64", "lr=3e-4"]` → a nested mapping; values are parsed as YAML scalars or lists."""
    raw: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} must look like key=value (e.g. sae.k=64)")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as err:
            problem = _problem_text(err)
            raise ConfigError(
                f"override {item!r}: the value is not valid YAML ({problem}); write a number, true/false, "
                f"a list like [1,2], or quote a literal string: {key}='\"...\"'"
            ) from None
        set_dotted(raw, key, parsed)
    return raw


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {key}: {part} is not a section")
    node[parts[-1]] = value


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: sections merge key by key, anything else in `extra` wins."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


MAX_CONFIG_BYTES = 4 << 20
"""Larger files are refused unread: a config is a small mapping, so this is the wrong file."""


def read_yaml_file(path: str | Path) -> Any:
    """The YAML document in `path`, parsed with `yaml.safe_load`; any unreadable, non-UTF-8, binary or
    malformed file (or a `!!python/...` tag) raises ConfigError naming the file and the line."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory; pass a YAML file such as configs/topk.yaml")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass a YAML file such as configs/topk.yaml")
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path} is {size >> 20} MiB, too large for a config; pass the YAML file")
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read config file {path} ({err.strerror}); check its permissions") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ConfigError(
            f"{path} line {line}: not UTF-8 text (byte 0x{data[err.start]:02x}); a config must be a UTF-8 "
            "YAML file -- is this a binary file?"
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}{_yaml_where(err, text)}: {_yaml_problem(err)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: YAML nested too deeply; a config is a flat mapping of sections") from None


def _problem_text(err: yaml.YAMLError) -> str:
    """PyYAML's short description of the problem (its first line)."""
    return str(getattr(err, "problem", None) or err).splitlines()[0]


def _yaml_where(err: yaml.YAMLError, text: str) -> str:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    if mark is not None:
        return f" line {mark.line + 1}, column {mark.column + 1}"
    position = getattr(err, "position", None)  # ReaderError (a control character): a character offset
    return f" line {text[:position].count(chr(10)) + 1}" if isinstance(position, int) else ""


def _yaml_problem(err: yaml.YAMLError) -> str:
    """What is wrong, in words, with the fix for the cases users meet."""
    problem = _problem_text(err)
    if isinstance(err, yaml.constructor.ConstructorError) and "tag" in problem:
        return (
            f"{problem}; saekit reads plain YAML only (yaml.safe_load) -- remove the !!python/... or other "
            "custom tag and write the value itself"
        )
    if isinstance(err, yaml.reader.ReaderError):
        return f"{problem}; a config must be UTF-8 YAML text -- is this a binary file?"
    context, mark = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and mark is not None:  # e.g. an unclosed [ is only noticed at the end of the file
        problem += f", {context} that starts at line {mark.line + 1}"
    return f"not valid YAML ({problem}); fix the syntax there"


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    loaded = read_yaml_file(path)
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path} must hold a YAML mapping of config keys, got {type(loaded).__name__}")
    return loaded


def load_config(cls: type, path: str | Path | None = None, overrides: list[str] | None = None) -> Any:
    """Build `cls` from a YAML file (optional) and dotted `key=value` overrides."""
    raw = read_yaml_mapping(path) if path is not None else {}
    raw = upgrade(cls, raw)
    return from_dict(cls, merge(raw, parse_overrides(overrides)))


# ---------------------------------------------------------------------------------------- versions

UPGRADES: dict[tuple[str, int], Any] = {}
"""(config class name, version) → function raw → raw producing version + 1. Filled by the modules that
own the renamed keys (`saekit.config` for TrainConfig)."""


def upgrade(cls: type, raw: dict[str, Any]) -> dict[str, Any]:
    """Patch a mapping written by an older saekit up to FORMAT_VERSION (no version key: as written now)."""
    raw = dict(raw)
    version = raw.pop("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ConfigError(
            f"format_version {version!r} is newer than this saekit understands ({FORMAT_VERSION}); "
            "upgrade saekit"
        )
    while version < FORMAT_VERSION:
        step = UPGRADES.get((cls.__name__, version))
        if step is not None:
            raw = step(raw)
        version += 1
    return raw


def save_config(cfg: Any, path: str | Path) -> None:
    body = {"format_version": FORMAT_VERSION, **to_dict(cfg)}
    atomic_write_text(Path(path), yaml.safe_dump(body, sort_keys=False))


def load_saved_config(cls: type, path: str | Path) -> Any:
    """A config file saekit wrote (any version), validated; unreadable files raise ConfigError."""
    return from_dict(cls, upgrade(cls, read_yaml_mapping(path)))


# ---------------------------------------------------------------------------------------- mapping


def from_dict(cls: type, raw: Any, prefix: str = "") -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__} must be a mapping, got {raw!r}")
    if hasattr(cls, "_normalise_raw"):
        raw = cls._normalise_raw(dict(raw), prefix)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = {**_type_hints(cls), **(cls._field_types(raw, prefix) if hasattr(cls, "_field_types") else {})}
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {sorted(fields)}"
            raise ConfigError(f"unknown config key '{prefix}{key}' for {cls.__name__}{hint}")
        kwargs[key] = coerce(hints[key], value, f"{prefix}{key}")
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{prefix}{err}") from None
    except TypeError as err:  # a required field was not given
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {err}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    return _tuples_to_lists(dataclasses.asdict(cfg))


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def coerce(tp: Any, value: Any, name: str) -> Any:
    """`value` as type `tp` (Optional, Literal, tuples, nested dataclasses, scalars), or ConfigError."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(arg, value, name)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{name}: bad value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{name} must be one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        return _coerce_tuple(args, value, name)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, prefix=f"{name}.")
    return _coerce_scalar(tp, value, name)


def _coerce_tuple(args: tuple, value: Any, name: str) -> tuple:
    if isinstance(value, str):  # `d_sae=4096,8192` on the command line
        value = [v.strip() for v in value.split(",")] if "," in value else [value]
    elif not isinstance(value, (list, tuple)):
        value = [value]  # a single value where a list is expected
    item_types = args if (len(args) != 2 or args[1] is not Ellipsis) else (args[0],) * len(value)
    if len(item_types) != len(value):
        raise ConfigError(f"{name} must have {len(item_types)} items, got {value!r}")
    pairs = enumerate(zip(item_types, value, strict=True))
    return tuple(coerce(t, _maybe_number(v), f"{name}[{i}]") for i, (t, v) in pairs)


def _maybe_number(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            return value
    return value


def _coerce_scalar(tp: Any, value: Any, name: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        number = _as_float(value)
        if number is not None and math.isfinite(number):
            return number
        if number is not None:  # no saekit setting means anything at inf or nan
            raise ConfigError(f"{name} must be a finite number (inf and nan are never valid), got {value!r}")
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)  # run_dir=2024 is a name, not a number
    else:
        return value
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    if value is None:
        hint = f"`{name}=` with nothing after '=' means null; give a value"
    else:
        hint = f"give {_EXAMPLES.get(tp, 'a ' + tp.__name__)}"
    raise ConfigError(f"{name} must be of type {tp.__name__}, got {shown} ({type(value).__name__}); {hint}")


_EXAMPLES = {
    int: "an integer (e.g. 64)",
    float: "a number (e.g. 3e-4)",
    bool: "true or false",
    str: "a string",
}


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        return float(value)  # YAML reads "3e-4" as a string
    except (ValueError, OverflowError):
        return None


def _tuples_to_lists(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _tuples_to_lists(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_tuples_to_lists(v) for v in obj]
    return obj


def require(ok: bool, name: str, fix: str) -> None:
    """Validation helper for `__post_init__`: raise ConfigError("name: fix") unless ok."""
    if not ok:
        raise ConfigError(f"{name}: {fix}")
