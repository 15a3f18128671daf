"""Offline by default: saekit never reaches the Hugging Face hub unless the user opts in.

`apply_offline_default()` sets HF_HUB_OFFLINE=1 and TRANSFORMERS_OFFLINE=1 when the user set neither,
the way the Makefile exports them. It runs when `saekit.models` is imported, before TransformerLens and
transformers: huggingface_hub reads these variables once, at its own import, so a later `os.environ` write
would not reach it. Any value the user gave (including 0, which opts in to downloads) is left alone.

Why the environment and not only saekit's own checks: tokenizer and config look-ups deep inside
transformers can reach the network too, and the variables are the one switch all of them honour.

    apply_offline_default()        # idempotent
    offline_mode()                 # True unless the user set HF_HUB_OFFLINE=0 (or TRANSFORMERS_OFFLINE=0)
"""

from __future__ import annotations

import os

OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_TRUE = ("1", "true", "yes", "on")


def user_set_offline_vars() -> bool:
    """True when the user gave either variable a (non-empty) value."""
    return any(os.environ.get(var, "").strip() for var in OFFLINE_VARS)


def apply_offline_default() -> None:
    """Set both variables to 1 unless the user set either of them."""
    if not user_set_offline_vars():
        for var in OFFLINE_VARS:
            os.environ[var] = "1"


def offline_mode() -> bool:
    """Whether hub access is off: saekit's default, unless a variable says otherwise."""
    if not user_set_offline_vars():
        return True
    flags = (os.environ.get(var, "").strip().lower() for var in OFFLINE_VARS)
    return any(flag in _TRUE for flag in flags)
