"""The model seam: the only package that imports TransformerLens.

Loads models by name (embedded SmolLM2, tiny test model, local HF dir, hub name), lists and validates hook
names, captures activations (and gradients) in one early-stopped pass, and splices replacements in.

    model = load_model("embedded")
    cap = capture(model, tokens, ["blocks.9.hook_resid_post"])      # cap.acts[name]: [B, T, 576] fp32

Importing this package puts the process in Hugging Face offline mode unless the user chose otherwise
(`saekit.models.offline`): it must happen before TransformerLens imports transformers, hence first here.
"""

from saekit.models.offline import apply_offline_default

apply_offline_default()

# ruff: noqa: E402  (the imports below must follow apply_offline_default)

from saekit.models.hooks import (
    Capture,
    capture,
    final_norm_and_unembed,
    hook_layer,
    hook_widths,
    list_hookpoints,
    logits_of,
    run_with_splice,
    validate_hookpoints,
)
from saekit.models.loading import BUILTIN_MODELS, load_model, load_spec, model_id
from saekit.models.tokens import bos_token_id, special_token_ids, special_token_mask, tokenizer_of

__all__ = [
    "BUILTIN_MODELS",
    "Capture",
    "bos_token_id",
    "capture",
    "final_norm_and_unembed",
    "hook_layer",
    "hook_widths",
    "list_hookpoints",
    "load_model",
    "load_spec",
    "logits_of",
    "model_id",
    "run_with_splice",
    "special_token_ids",
    "special_token_mask",
    "tokenizer_of",
    "validate_hookpoints",
]
