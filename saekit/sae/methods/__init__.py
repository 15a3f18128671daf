"""The built-in SAE methods: one module each, each ending with its `register_method(Method(...))`.

Imported by `saekit.sae`, so every method is registered whenever the SAE layer is. A new method is one
module here (its section, encode rule, objective and declaration) plus one import line below.
"""

# ruff: noqa: F401
from saekit.sae.methods import (
    aux_zipf,
    batchtopk,
    feature_choice,
    gsae,
    jumprelu,
    matryoshka,
    mp,
    multik,
    topk,
)
