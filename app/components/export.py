"""Export a latent card as a standalone HTML page, and as a PNG when a headless browser is installed.

The PNG is rendered offline by Debian's chromium driven through the `playwright` package (the same pair
the browser test uses; `playwright install` is never needed). Without them the app says so and offers
the HTML, which any browser can print or screenshot.

    export_buttons(card, notes, title="demo/topk · blocks.9.hook_resid_post", stem="topk_latent_42")
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path
from typing import Any

import streamlit as st

from saekit.analysis.render import card_html

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def png_renderer_missing() -> str | None:
    """Why a PNG cannot be rendered here, or None when it can."""
    if not CHROMIUM.is_file():
        return "PNG export needs Debian's chromium (`apt-get install chromium`)"
    if importlib.util.find_spec("playwright") is None:
        return "PNG export needs the playwright package (`pip install playwright`; no browser download)"
    return None


def html_to_png(page_html: str, width: int = 1000) -> bytes:
    """A full-page screenshot of `page_html` (a static page: no network, no scripts needed)."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "card.html"
        path.write_text(page_html, encoding="utf-8")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
            try:
                page = browser.new_page(viewport={"width": width, "height": 800})
                page.goto(path.as_uri())
                return page.screenshot(full_page=True)
            finally:
                browser.close()


@st.cache_data(show_spinner="Rendering the card as PNG…", max_entries=16)
def _png(page_html: str) -> bytes:
    return html_to_png(page_html)


def export_buttons(card: Any, notes: Any, *, title: str, stem: str) -> None:
    page = card_html(
        card,
        label=notes.label(card.latent) if notes else "",
        note=notes.note(card.latent) if notes else "",
        title=title,
    )
    col_html, col_png = st.columns(2)
    col_html.download_button(
        "Download card (HTML)",
        data=page,
        file_name=f"{stem}.html",
        mime="text/html",
        key="latents_export_html",
    )
    missing = png_renderer_missing()
    if missing:
        col_png.caption(missing + "; the HTML opens in any browser.")
    elif col_png.button("Render PNG", key="latents_export_png"):
        try:
            col_png.download_button(
                "Download card (PNG)", data=_png(page), file_name=f"{stem}.png", mime="image/png",
                key="latents_export_png_file",
            )  # fmt: skip
        except Exception as err:  # a browser that fails to start must not break the card
            col_png.warning(f"PNG rendering failed ({type(err).__name__}: {err}); use the HTML export")
