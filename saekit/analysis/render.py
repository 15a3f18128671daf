"""Tokens and latent cards as text and HTML, for the app, notebooks and exported files.

Whitespace is made visible (a leading space as '␣', a newline as '↵', a tab as '⇥'): ' the' and 'the' are
different tokens and a reader must see which one a latent likes. Heat-maps are escaped HTML spans, one per
token, shaded by activation; `card_html` is a self-contained page (inline styles, no scripts, nothing
fetched) that opens offline and renders on GitHub.

    shown_token(" the")                     # '␣the'
    html = token_heatmap(ex.tokens, ex.acts, centre=ex.centre, scale=card.max_activation)
    Path("latent_42.html").write_text(card_html(card, label="French words"))
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

HUE = "255, 110, 30"
"""Orange: reads as 'activation' on both light and dark themes."""
SPACE, NEWLINE, TAB = "␣", "↵", "⇥"


def shown_token(token: str) -> str:
    """The token with every space, newline and tab visible (for tables and labels; not escaped)."""
    return token.replace(" ", SPACE).replace("\n", NEWLINE).replace("\t", TAB) if token else "∅"


def visible_token(token: str) -> str:
    """The token for running text in a heat-map: newlines and tabs visible, spaces kept as spaces unless
    the token is only whitespace (then '·'), HTML-escaped."""
    shown = token.replace("\n", NEWLINE).replace("\t", TAB)
    if shown.strip() == "":
        shown = shown.replace(" ", "·") or "∅"
    return html.escape(shown)


def token_heatmap(
    tokens: Sequence[str],
    values: Sequence[float],
    *,
    centre: int | None = None,
    scale: float | None = None,
    label: str | None = None,
) -> str:
    """An inline HTML block of tokens shaded by `values` / `scale` (default: the largest value).

    `centre` (the example's own position) is outlined; `label` is a small prefix such as the activation.
    Every token carries its value as a tooltip.
    """
    top = scale if scale and scale > 0 else max([v for v in values if v > 0], default=1.0)
    spans = []
    for i, (token, value) in enumerate(zip(tokens, values, strict=True)):
        alpha = 0.0 if value <= 0 else min(1.0, 0.15 + 0.85 * value / top)
        border = "outline: 2px solid rgba(30,90,200,0.9);" if i == centre else ""
        spans.append(
            f'<span class="saekit-tok" title="{value:.3f}" style="background: rgba({HUE}, {alpha:.2f});'
            f'{border} padding: 0 1px; border-radius: 2px; white-space: pre;">{visible_token(token)}</span>'
        )
    prefix = f'<span style="opacity: 0.6; margin-right: 6px;">{html.escape(label)}</span>' if label else ""
    return (
        '<div class="saekit-heatmap" style="font-family: monospace; line-height: 1.9; margin: 2px 0;">'
        f"{prefix}{''.join(spans)}</div>"
    )


def number(value: Any, digits: int = 4) -> str:
    """One formatting rule for every number a view shows: `digits` significant digits, thousands
    separators for large integers, scientific notation for tiny values, '—' for missing or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or abs(value) >= 1e4:
        return f"{value:,.0f}"
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.{max(1, digits - 1)}e}"
    return f"{value:.{digits}g}"


def _examples_html(examples: Sequence[Any], scale: float) -> str:
    return "".join(
        token_heatmap(ex.tokens, ex.acts, centre=ex.centre, scale=scale, label=f"{ex.activation:.2f}")
        for ex in examples
    )


def _token_list(pairs: Sequence[tuple[str, float]]) -> str:
    return ", ".join(f"<code>{html.escape(shown_token(t))}</code> ({v:+.2f})" for t, v in pairs)


def card_html(card: Any, *, label: str = "", note: str = "", title: str = "") -> str:
    """A standalone HTML page of one latent card (`LatentIndex.latent(i)`): numbers, top and quantile
    examples as heat-maps, promoted/suppressed tokens, decoder neighbours, and the researcher's note."""
    heading = html.escape(f"Latent {card.latent}" + (f" · {label}" if label else ""))
    stats = [
        ("frequency", number(card.frequency)),
        ("fired on", f"{card.count:,} tokens"),
        ("max activation", number(card.max_activation)),
        ("mean activation", number(card.mean_activation)),
        ("input score", number(card.input_score)),
        ("output score", number(card.output_score)),
    ]
    rows = "".join(f"<tr><th>{k}</th><td>{html.escape(v)}</td></tr>" for k, v in stats)
    bins = sorted({ex.bin for ex in card.quantile_examples}, reverse=True)
    quantiles = "".join(
        f"<h3>Quantile bin {b} ({card.quantile_bounds[b]:.2f} – {card.quantile_bounds[b + 1]:.2f})</h3>"
        + _examples_html([ex for ex in card.quantile_examples if ex.bin == b], card.max_activation)
        for b in bins
    )
    neighbours = ", ".join(f"{i} ({c:.2f})" for i, c in card.neighbours)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title or heading)}</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:16px auto;padding:0 12px}"
        "th{text-align:left;padding-right:16px;font-weight:normal;opacity:.7}h3{font-size:1em}</style>",
        f"</head><body><h1>{heading}</h1>",
        f"<p class='saekit-note'>{html.escape(note)}</p>" if note else "",
        f"<p style='opacity:.7'>{html.escape(title)}</p>" if title else "",
        f"<table>{rows}</table>",
        "<h2>Top activations</h2>",
        _examples_html(card.top_examples, card.max_activation) or "<p>never fired on the indexed text</p>",
        quantiles,
        f"<h2>Promoted tokens</h2><p>{_token_list(card.promoted)}</p>",
        f"<h2>Suppressed tokens</h2><p>{_token_list(card.suppressed)}</p>",
        f"<h2>Decoder neighbours</h2><p>{html.escape(neighbours)}</p>",
        "</body></html>",
    ]
    return "".join(parts)
