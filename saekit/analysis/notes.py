"""Per-latent notes and labels a researcher writes while reading cards, kept beside the run's index.

They live in `<run>/latent_notes.json`, outside `index/`, because `saekit index` replaces the whole index
directory when it rebuilds: notes survive re-indexing. Every save rewrites the file atomically, so a crash
or a second app tab never leaves half a file.

    notes = LatentNotes.load("runs/demo/topk")
    notes.set(42, label="French words", note="fires on ' le', ' la' and ' les'")
    notes.label(42)              # 'French words' ('' when none)
    notes.describe(42)           # 'latent 42 · French words', the form every view shows
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saekit.errors import RunDirError
from saekit.io import atomic_write_json

logger = logging.getLogger(__name__)

NOTES_FILE = "latent_notes.json"
NOTES_FORMAT_VERSION = 1
MAX_LABEL_CHARS = 80
"""Labels are shown in table cells and headings; longer text belongs in the note."""


@dataclass
class LatentNotes:
    """The notes of one run: {latent: {"label", "note", "updated"}}; empty entries are not stored."""

    path: Path
    entries: dict[int, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, run_dir: str | Path) -> LatentNotes:
        """The run's notes (none yet: an empty set that `set` will create the file for)."""
        path = Path(run_dir) / NOTES_FILE
        if not path.is_file():
            return cls(path)
        try:
            raw = json.loads(path.read_text())
            entries = {int(k): dict(v) for k, v in (raw.get("latents") or {}).items()}
        except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as err:
            raise RunDirError(
                f"{path} is not a valid notes file ({err}); fix or move it aside to start new notes"
            ) from None
        return cls(path, entries)

    def label(self, latent: int) -> str:
        return str(self.entries.get(int(latent), {}).get("label", ""))

    def note(self, latent: int) -> str:
        return str(self.entries.get(int(latent), {}).get("note", ""))

    def describe(self, latent: int) -> str:
        """'latent 42 · French words', or 'latent 42' when it has no label."""
        label = self.label(latent)
        return f"latent {latent} · {label}" if label else f"latent {latent}"

    def labelled(self) -> dict[int, str]:
        """{latent: label} of every latent that has a label, by id."""
        return {i: e["label"] for i, e in sorted(self.entries.items()) if e.get("label")}

    def set(self, latent: int, *, label: str = "", note: str = "") -> None:
        """Store (or, with both empty, delete) the label and note of `latent`, and save the file."""
        label, note = " ".join(label.split()), note.strip()
        if len(label) > MAX_LABEL_CHARS:
            raise RunDirError(
                f"label of latent {latent} has {len(label)} characters; keep it under {MAX_LABEL_CHARS} "
                "and put the rest in the note"
            )
        if label or note:
            self.entries[int(latent)] = {"label": label, "note": note, "updated": time.time()}
        else:
            self.entries.pop(int(latent), None)
        self.save()

    def save(self) -> None:
        body = {str(i): e for i, e in sorted(self.entries.items())}
        atomic_write_json(self.path, {"format_version": NOTES_FORMAT_VERSION, "latents": body})
        logger.info("saved %d latent notes to %s", len(self.entries), self.path)
