"""Method studies: Pareto sweeps (k × seed) per method on one cache, frontiers at common L0s, and each
paper's claim judged against TopK with the seed spread (`saekit study`, study.json, the Compare page).

    from saekit.study import run_study
    print(run_study(load_config(StudyConfig, "configs/study.yaml")))
"""

from saekit.study.claims import CLAIMS, judge_claims
from saekit.study.frontier import Curve, common_l0s, seed_stat
from saekit.study.report import format_study
from saekit.study.runner import run_study

__all__ = ["CLAIMS", "Curve", "common_l0s", "format_study", "judge_claims", "run_study", "seed_stat"]
