"""Per-latent labels and notes in the app: read beside every mention of a latent, edited on its card.

Stored by `saekit.analysis.notes.LatentNotes` in `<run>/latent_notes.json` (outside index/, so they
survive `saekit index`). Read fresh on every run: a note saved in another tab shows up on the next click.

    notes = notes_of(run)                    # LatentNotes, or None after a warning (unreadable file)
    describe(notes, 42)                      # 'latent 42 · French words'
    notes_editor(run, notes, 42)             # label + note form with a Save button
"""

from __future__ import annotations

import streamlit as st

from saekit.analysis.notes import MAX_LABEL_CHARS, LatentNotes
from saekit.errors import SaekitError
from saekit.runs import RunInfo


def notes_of(run: RunInfo) -> LatentNotes | None:
    try:
        return LatentNotes.load(run.path)
    except SaekitError as err:
        st.warning(str(err))
        return None


def label(notes: LatentNotes | None, latent: int) -> str:
    return notes.label(latent) if notes else ""


def describe(notes: LatentNotes | None, latent: int) -> str:
    return notes.describe(latent) if notes else f"latent {latent}"


def _save(run: RunInfo, latent: int) -> None:
    try:
        LatentNotes.load(run.path).set(
            latent,
            label=st.session_state["latents_note_label"],
            note=st.session_state["latents_note_text"],
        )
        st.session_state["latents_note_saved"] = latent
    except SaekitError as err:
        st.session_state["latents_note_error"] = str(err)


def notes_editor(run: RunInfo, notes: LatentNotes | None, latent: int) -> None:
    """A small form for the label and note of `latent`, filled with what is saved."""
    if notes is None:
        return
    if st.session_state.get("latents_note_for") != latent:  # another latent: show its saved text
        st.session_state["latents_note_for"] = latent
        st.session_state["latents_note_label"] = notes.label(latent)
        st.session_state["latents_note_text"] = notes.note(latent)
    with st.form("latents_note_form", border=False):
        st.text_input(f"Label (≤ {MAX_LABEL_CHARS} characters)", key="latents_note_label")
        st.text_area("Note", key="latents_note_text", height=80)
        st.form_submit_button("Save note", key="latents_note_save", on_click=_save, args=(run, latent))
    if (error := st.session_state.pop("latents_note_error", None)) is not None:
        st.error(error)
    elif st.session_state.pop("latents_note_saved", None) == latent:
        st.success(f"saved to {notes.path.name}")
