"""Layers import downward only (style.md, "Layers and ownership"), checked on the static import graph.

Every `import`/`from … import` of a saekit module anywhere in a file counts — module level, inside functions
and under TYPE_CHECKING — so a lazy import cannot hide an upward edge. A module may import its own
package's modules and any module of a lower layer.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

LAYERS: list[tuple[str, ...]] = [
    ("saekit", "saekit.errors", "saekit.types"),
    ("saekit.io", "saekit.ranks"),
    ("saekit.config_io", "saekit.config_help"),
    ("saekit.kernels",),
    ("saekit.formats",),
    ("saekit.sae",),
    (
        "saekit.config",
        "saekit.config_bench",
        "saekit.config_checks",
        "saekit.config_index",
        "saekit.config_study",
        "saekit.config_train",
    ),
    ("saekit.data", "saekit.synthetic"),
    ("saekit.models",),
    ("saekit.activations",),
    ("saekit.rundir",),
    ("saekit.train",),
    ("saekit.eval",),
    ("saekit.analysis",),
    ("saekit.runs", "saekit.interop"),
    (
        "saekit.compare",
        "saekit.demo",
        "saekit.bench",
        "saekit.app_launcher",
        "saekit.study",
        "saekit.run_summary",
    ),
    ("saekit.cli",),
    ("saekit.__main__", "app"),
]
"""Lowest first. `saekit.kernels` is the top-level kernels/ directory, installed under that name."""


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "kernels":
        parts = ["saekit", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def unit_of(module: str) -> str:
    """The layer entry a module belongs to: the longest listed prefix."""
    names = [name for layer in LAYERS for name in layer]
    matches = [n for n in names if module == n or module.startswith(n + ".")]
    assert matches, f"{module} is in no layer: add it to LAYERS in {__file__}"
    return max(matches, key=len)


def rank_of(module: str) -> int:
    unit = unit_of(module)
    return next(i for i, layer in enumerate(LAYERS) if unit in layer)


def imported_modules(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from saekit import models`
    return {name for name in found if name == "saekit" or name.startswith("saekit.") or name == "app"}


def source_files() -> list[Path]:
    files = [*sorted((ROOT / "saekit").rglob("*.py")), *sorted((ROOT / "kernels").rglob("*.py"))]
    return files + sorted((ROOT / "app").rglob("*.py"))


def upward_edges() -> list[str]:
    edges = []
    for path in source_files():
        module = module_name(path)
        if module.startswith("app"):
            module = "app"
        for target in imported_modules(path, module):
            try:
                unit = unit_of(target)
            except AssertionError:
                continue  # `from saekit.x import name` also yields "saekit.x.name": judged by its module
            if unit == unit_of(module) or module.startswith(unit + "."):
                continue  # inside its own package
            if rank_of(target) > rank_of(module):
                edges.append(f"{path.relative_to(ROOT)}: {module} imports {target} (a higher layer)")
    return edges


def test_every_module_belongs_to_a_layer():
    for path in source_files():
        module = module_name(path)
        unit_of("app" if module.startswith("app") else module)


def test_imports_run_downward_only():
    assert upward_edges() == []


@pytest.mark.parametrize("lower", ["saekit.sae", "saekit.kernels"])
def test_sae_and_kernels_never_import_train_or_higher(lower):
    train = rank_of("saekit.train")
    for path in source_files():
        module = module_name(path)
        if not (module == lower or module.startswith(lower + ".")):
            continue
        for target in imported_modules(path, module):
            if target.startswith("saekit.") and any(
                target == n or target.startswith(n + ".") for layer in LAYERS[train:] for n in layer
            ):
                pytest.fail(f"{path.relative_to(ROOT)} imports {target}")


def test_the_checker_sees_an_upward_import(tmp_path):
    """The graph walk must catch a lazy upward import inside a function (a test that can fail)."""
    fake = ROOT / "saekit" / "sae" / "_probe_upward.py"
    fake.write_text("def f():\n    from saekit.train import train\n    return train\n")
    try:
        assert any("_probe_upward" in edge for edge in upward_edges())
    finally:
        fake.unlink()


def test_no_string_imports_of_saekit_modules():
    """Built-ins are imported by name, never through importlib strings (which the graph cannot see)."""
    offenders = []
    for path in source_files():
        text = path.read_text()
        if "import_module(" in text or "__import__(" in text:
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
