"""What export and import share: the output directory rule, the conversion report, model names.

check_new_directory(out)                 # refuse to replace anything already there
write_report(staging, report)            # saekit_conversion.json next to the converted files
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saekit.errors import check_directory_target
from saekit.formats import FormatError
from saekit.interop.verify import Agreement

REPORT_FILE = "saekit_conversion.json"


@dataclass(frozen=True)
class ConversionReport:
    """What a conversion did and how closely the result reproduces the source."""

    direction: str
    """"export" or "import"."""
    format: str
    source: str
    out: str
    rule: str
    """The inference rule written: topk, jumprelu or relu."""
    method: str
    """The saekit method on the saekit side."""
    sample: str
    """Where the check's activations came from."""
    agreement: Agreement
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "direction": self.direction,
            "format": self.format,
            "source": self.source,
            "out": self.out,
            "rule": self.rule,
            "method": self.method,
            "sample": self.sample,
            "check": self.agreement.as_dict(),
            "notes": self.notes,
        }


def check_new_directory(out: Path) -> None:
    """`out` must not exist yet (or be an empty directory): a conversion never replaces earlier files."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FormatError(
            f"{out} already exists and is not empty; choose a new output directory or remove it"
        )
    check_directory_target(out, "out")


def write_report(directory: Path, report: ConversionReport) -> None:
    (Path(directory) / REPORT_FILE).write_text(json.dumps(report.as_dict(), indent=2) + "\n")


def load_name(model_id: str) -> str:
    """The name `saekit.models.load_model` takes for a recorded model id ("embedded:SmolLM2…@0.1.2" →
    "embedded"); other ids (hub names, directories) are load names already."""
    for builtin in ("embedded", "tiny"):
        if model_id == builtin or model_id.startswith(builtin + ":"):
            return builtin
    return model_id
