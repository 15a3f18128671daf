"""Hook point names across tools: saekit and SAELens use TransformerLens names (`blocks.9.hook_resid_post`);
sparsify names Hugging Face modules (`layers.9`, `layers.9.mlp`); dictionary_learning records a layer number
and a submodule description.

    to_sparsify_name("blocks.9.hook_resid_post")     # "layers.9"
    from_sparsify_name("model.layers.9.mlp")          # "blocks.9.hook_mlp_out"
"""

from __future__ import annotations

import re

_SITES = {"hook_resid_post": "", "hook_mlp_out": ".mlp", "hook_attn_out": ".self_attn"}
_TL_NAME = re.compile(r"^blocks\.(\d+)\.(hook_resid_post|hook_mlp_out|hook_attn_out)$")
_HF_NAME = re.compile(r"^(?:[\w.]*\.)?(?:layers|h)\.(\d+)(\.mlp|\.self_attn|\.attn)?$")


def to_sparsify_name(hookpoint: str) -> str | None:
    """The module path sparsify would hook for a TransformerLens hook name; None when there is none."""
    match = _TL_NAME.match(hookpoint)
    return f"layers.{match.group(1)}{_SITES[match.group(2)]}" if match else None


def from_sparsify_name(name: str) -> str | None:
    """The TransformerLens hook name of a sparsify hook point (a module's output); None when unknown."""
    match = _HF_NAME.match(name)
    if not match:
        return None
    site = {
        None: "hook_resid_post",
        ".mlp": "hook_mlp_out",
        ".self_attn": "hook_attn_out",
        ".attn": "hook_attn_out",
    }
    return f"blocks.{match.group(1)}.{site[match.group(2)]}"


def from_layer_and_submodule(layer: object, submodule: object) -> str | None:
    """dictionary_learning's (layer, submodule_name) as a TransformerLens hook name; None when unknown."""
    if not isinstance(layer, int) or isinstance(layer, bool) or layer < 0:
        return None
    text = str(submodule or "resid").lower()
    for key, site in (("mlp", "hook_mlp_out"), ("attn", "hook_attn_out"), ("resid", "hook_resid_post")):
        if key in text:
            return f"blocks.{layer}.{site}"
    return None


def layer_and_submodule(hookpoint: str) -> tuple[int, str] | None:
    """(layer, submodule_name) for dictionary_learning's config; None for other hook names."""
    match = _TL_NAME.match(hookpoint)
    if not match:
        return None
    site = {"hook_resid_post": "resid_post", "hook_mlp_out": "mlp_out", "hook_attn_out": "attn_out"}
    return int(match.group(1)), f"{site[match.group(2)]}_layer_{match.group(1)}"
