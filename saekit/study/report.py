"""Text report of a study: the run table (method × k × seed) and one line per claim with its numbers.

sys.stdout.write(format_study(json.loads(Path("runs/study/study.json").read_text())))
"""

from __future__ import annotations

from typing import Any

_RUN_COLUMNS = (
    ("method", "{}", 18),
    ("k", "{}", 4),
    ("seed", "{}", 4),
    ("l0", "{:.1f}", 6),
    ("fvu", "{:.4f}", 7),
    ("ce_recovered", "{:.4f}", 12),
    ("dead", "{:.2%}", 7),
)


def format_runs(runs: list[dict[str, Any]]) -> str:
    header = " ".join(f"{name:>{width}}" for name, _, width in _RUN_COLUMNS)
    lines = [header, "-" * len(header)]
    for run in runs:
        cells = []
        for name, fmt, width in _RUN_COLUMNS:
            value = run.get(name)
            cells.append(f"{fmt.format(value) if value is not None else '-':>{width}}"[-width:])
        lines.append(" ".join(cells))
    return "\n".join(lines)


def _stat(stat: dict[str, Any]) -> str:
    return f"{stat['mean']:.4f} ± {stat['spread']:.4f}"


def format_claim(claim: dict[str, Any]) -> str:
    head = f"{claim['method']}: {claim['claim']} ({claim['source']}): {claim['verdict'].upper()}"
    if "reason" in claim:
        return f"{head} ({claim['reason']})"
    if claim["kind"] == "no_dead":
        return f"{head}; dead fraction {_stat(claim['dead'])} (max {claim['max_dead']:.2%})"
    parts = [
        f"L0 {p['l0']:.1f}: {_stat(p['method'])} vs {claim['baseline']} {_stat(p['baseline'])} "
        f"(gain {p['gain']:+.4f}, noise {p['noise']:.4f})"
        for p in claim["points"]
    ]
    return head + "\n    " + "\n    ".join(parts)


def format_study(study: dict[str, Any]) -> str:
    text = [format_runs(study["runs"])]
    text += [f"skipped {s['method']}: {s['reason']}" for s in study.get("skipped", [])]
    text.append("\nclaims (mean ± half-range over seeds, interpolated at common held-out L0s):")
    text += [format_claim(c) for c in study["claims"]] or ["(no method with a registered claim)"]
    return "\n".join(text)
