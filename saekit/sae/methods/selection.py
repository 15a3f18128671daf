"""The per-token or batch selection rules that composite methods (Matryoshka, aux_zipf) train with.

Those methods change the loss, not the encode rule, so their section names one of these rules and carries
its keys (k, AuxK, the threshold EMA, Feature Choice's m).

    act = make_selection(params)       # params.activation in SELECTION_RULES
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from saekit.sae.activations import Activation
from saekit.sae.methods.batchtopk import BatchTopK
from saekit.sae.methods.feature_choice import FeatureChoice, FeatureChoiceParams
from saekit.sae.methods.topk import TopK

SELECTION_RULES: dict[str, type[Activation]] = {
    "topk": TopK,
    "batchtopk": BatchTopK,
    "mutual_choice": BatchTopK,
    "feature_choice": FeatureChoice,
}


@dataclass(frozen=True)
class SelectionParams(FeatureChoiceParams):
    activation: Literal["batchtopk", "mutual_choice", "feature_choice", "topk"] = "batchtopk"
    """Selection rule: batchtopk / mutual_choice (top B·k of the batch), feature_choice, or per-row topk."""


def make_selection(params: SelectionParams) -> Activation:
    return SELECTION_RULES[params.activation](params)
