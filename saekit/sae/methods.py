"""Imports every module that registers an activation or objective, so names resolve from configs.

Add one import line per new method module.
"""

# ruff: noqa: F401
import saekit.sae.batchtopk  # batchtopk, mutual_choice
import saekit.sae.feature_choice  # feature_choice
import saekit.sae.gradient  # gsae (gradient-weighted TopK selection)
import saekit.sae.matching_pursuit  # mp activation + mp objective
import saekit.train.aux_zipf  # aux_zipf objective (provisional)
import saekit.train.matryoshka  # matryoshka objective (fixed and sampled prefixes)
import saekit.train.multik  # multi_topk, hierarchical_topk, msae objectives; topk_softcap activation
