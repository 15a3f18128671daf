"""Token heat-maps: text as a row of tokens, each shaded by an activation, rendered as escaped HTML.

Whitespace-only tokens are shown visibly (·, ↵) so a latent firing on a space or newline is not lost,
and every token carries its value as a tooltip.

    html = token_heatmap(example.tokens, example.acts, centre=example.centre, scale=card.max_activation)
    st.markdown(html, unsafe_allow_html=True)
"""

from __future__ import annotations

import html
from collections.abc import Sequence

HUE = "255, 110, 30"
"""Orange: reads as 'activation' on both light and dark themes."""


def visible_token(token: str) -> str:
    """The token with spaces, newlines and tabs made visible, HTML-escaped."""
    shown = token.replace("\n", "↵").replace("\t", "⇥")
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
