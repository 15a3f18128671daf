"""SAE core: the `Sae` module, the method registry and the built-in methods, objectives, initialisation,
decoder constraint and checkpoints. Imports nothing above itself (kernels and the shared types only).

    from saekit.sae import Sae, SaeConfig, make_objective
    sae = Sae(d_in, SaeConfig.make("batchtopk", k=32)); init_sae_from_data_(sae, sae.scale_input(x))
    objective = make_objective(sae.cfg)        # the method's loss, one object per training run
    sae.save("runs/x/final"); sae = Sae.load("runs/x/final")
"""

from saekit.sae.activations import Activation, Encoded
from saekit.sae.checkpoint import fold_act_scale, load_sae, save_sae
from saekit.sae.config import SaeConfig
from saekit.sae.constraint import constrained_adam_step, normalize_rows_, project_out_parallel_
from saekit.sae.init import geometric_median, init_sae_from_data_, init_weights_tied_
from saekit.sae.method import METHODS, LevelReport, Method, get_method, register_method
from saekit.sae.model import Sae, SaeOutput, estimate_act_scale, make_activation
from saekit.sae.objective import Objective, StepOutput, make_objective, mse_scale_from_sample

# Last: the built-in methods register themselves against the modules above.
from saekit.sae import methods  # noqa: E402, F401  isort: skip

__all__ = [
    "METHODS",
    "Activation",
    "Encoded",
    "LevelReport",
    "Method",
    "Objective",
    "Sae",
    "SaeConfig",
    "SaeOutput",
    "StepOutput",
    "constrained_adam_step",
    "estimate_act_scale",
    "fold_act_scale",
    "geometric_median",
    "get_method",
    "init_sae_from_data_",
    "init_weights_tied_",
    "load_sae",
    "make_activation",
    "make_objective",
    "mse_scale_from_sample",
    "normalize_rows_",
    "project_out_parallel_",
    "register_method",
    "save_sae",
]
