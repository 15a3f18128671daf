"""Token heat-maps and visible whitespace for the pages: the library's renderers (`saekit.analysis.render`),
so the app, notebooks and exported cards draw tokens the same way.

    html = token_heatmap(ex.tokens, ex.acts, centre=ex.centre, scale=card.max_activation)
    shown_token(" the")   # '␣the'
"""

from saekit.analysis.render import number, shown_token, token_heatmap, visible_token

__all__ = ["number", "shown_token", "token_heatmap", "visible_token"]
