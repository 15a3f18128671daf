"""Tables with one number format, no 'None' cells, every row visible when asked, and latent rows that open
the latent's card when clicked.

    show_table(rows, key="overview_eval_table", full_height=True)
    latent_table(rows, key="latents_ranking_table")     # rows carry "latent"; a click opens its card
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import streamlit as st

PENDING = "latents_pending"
"""Session key the Latents page reads before drawing its id box: a latent picked anywhere on the page."""
LONG_TEXT = frozenset({"top example", "generated text (greedy)", "latents"})
"""Columns of running text, given the most width."""
FLOAT_FORMAT = "%.4g"
"""Four significant digits, the same rule as `saekit.analysis.render.number`."""


def column_config(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Integers with thousands separators, floats with four significant digits, latent ids plain."""
    config: dict[str, Any] = {}
    for name in rows[0] if rows else ():
        if name in LONG_TEXT:
            config[name] = st.column_config.TextColumn(name, width="large")
            continue
        values = [r.get(name) for r in rows if r.get(name) is not None]
        if not values or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
            continue
        if name == "latent" or name.endswith("id"):  # identifiers: no thousands separators
            config[name] = st.column_config.NumberColumn(name, format="%d")
        elif all(isinstance(v, int) for v in values):
            config[name] = st.column_config.NumberColumn(name, format="localized")
        else:
            config[name] = st.column_config.NumberColumn(name, format=FLOAT_FORMAT)
    return config


def show_table(rows: Sequence[dict[str, Any]], *, key: str, full_height: bool = False, **kwargs: Any) -> Any:
    """`st.dataframe` of plain rows: missing values shown as '—'; `full_height` never scrolls."""
    return st.dataframe(
        list(rows),
        hide_index=True,
        key=key,
        column_config=column_config(rows),
        placeholder="—",
        height="content" if full_height else "auto",
        **kwargs,
    )


def open_latent(latent: int) -> None:
    """Show `latent`'s card: the Latents page applies it on the next run (before its id box exists)."""
    st.session_state[PENDING] = int(latent)
    st.rerun()


def apply_pending_latent() -> None:
    """Copy a picked latent into the id box's key; call before the box is drawn."""
    if PENDING in st.session_state:
        st.session_state["latents_id"] = st.session_state.pop(PENDING)


def latent_table(rows: Sequence[dict[str, Any]], *, key: str, full_height: bool = False) -> None:
    """A table of latents (rows with a "latent" column); clicking a row opens that latent's card.

    Only a change of the selected row counts as a click: the selection stays on the table across reruns,
    and re-applying it would undo every other way of choosing a latent.
    """
    if not rows:
        st.caption("no matching latents")
        return
    event = show_table(rows, key=key, full_height=full_height, on_select="rerun", selection_mode="single-row")
    picked = list(event.selection.rows) if event is not None else []
    previous = st.session_state.get(f"{key}_clicked")
    st.session_state[f"{key}_clicked"] = picked
    if picked and picked != previous and picked[0] < len(rows):
        open_latent(rows[picked[0]]["latent"])
