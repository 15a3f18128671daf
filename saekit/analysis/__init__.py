"""Latent analysis: the index builder, the read-only query API shared by the app and notebooks, live
encoding of text, steering, and the input/output scores of Arad et al. (algorithms.md §9).

    build_index("runs/demo/topk")                                  # -> runs/demo/topk/index/
    card = LatentIndex.open("runs/demo/topk").latent(42)
    result = steer(model, sae, "I think that", {42: 8.0}, max_new_tokens=20, seed=0, temperature=0.7)
"""

from saekit.analysis.build import build_index
from saekit.analysis.decoder import decoder_neighbours, logit_effects, logit_lens
from saekit.analysis.live import TokenActivations, dense_code_of, encode_text
from saekit.analysis.query import METRICS, Example, LatentCard, LatentIndex
from saekit.analysis.scores import input_scores, output_score, output_score_terms, output_scores
from saekit.analysis.steering import (
    SteeringResult,
    boost_code,
    coefficient_sweep,
    generate,
    steer,
    steer_activations,
)

__all__ = [
    "METRICS",
    "Example",
    "LatentCard",
    "LatentIndex",
    "SteeringResult",
    "TokenActivations",
    "boost_code",
    "build_index",
    "coefficient_sweep",
    "decoder_neighbours",
    "dense_code_of",
    "encode_text",
    "generate",
    "input_scores",
    "logit_effects",
    "logit_lens",
    "output_score",
    "output_score_terms",
    "output_scores",
    "steer",
    "steer_activations",
]
