"""SAE core: the `Sae` module, activation strategies, initialisation, decoder constraint and checkpoints.

from saekit.sae import Sae, init_sae_from_data_, constrained_adam_step
sae = Sae(d_in, cfg); init_sae_from_data_(sae, sae.scale_input(x_sample))
sae.save("runs/x/final"); sae = Sae.load("runs/x/final")
"""

from saekit.sae.activations import (
    ACTIVATIONS,
    Activation,
    Encoded,
    Selection,
    TopK,
    get_activation,
    load_method_modules,
    register_activation,
)
from saekit.sae.checkpoint import fold_act_scale, load_sae, save_sae
from saekit.sae.constraint import constrained_adam_step, normalize_rows_, project_out_parallel_
from saekit.sae.init import geometric_median, init_sae_from_data_, init_weights_tied_
from saekit.sae.model import Sae, SaeOutput, estimate_act_scale

__all__ = [
    "ACTIVATIONS",
    "Activation",
    "Encoded",
    "Sae",
    "SaeOutput",
    "Selection",
    "TopK",
    "constrained_adam_step",
    "estimate_act_scale",
    "fold_act_scale",
    "geometric_median",
    "get_activation",
    "init_sae_from_data_",
    "init_weights_tied_",
    "load_method_modules",
    "load_sae",
    "normalize_rows_",
    "project_out_parallel_",
    "register_activation",
    "save_sae",
]
