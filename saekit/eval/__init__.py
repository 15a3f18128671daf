"""Evaluation: streaming reconstruction/sparsity metrics, spliced-model CE/KL, and `saekit eval RUN`.

from saekit.eval import evaluate_run, format_eval_table
result = evaluate_run("runs/topk")          # also writes runs/topk/eval.json
print(format_eval_table(result))
"""

from saekit.eval.evaluate import evaluate_run
from saekit.eval.metrics import ReconstructionStats, SparsityStats, log_density_histogram
from saekit.eval.splice import spliced_losses
from saekit.eval.table import format_eval_table

__all__ = [
    "ReconstructionStats",
    "SparsityStats",
    "evaluate_run",
    "format_eval_table",
    "log_density_histogram",
    "spliced_losses",
]
