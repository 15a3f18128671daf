"""Study frontiers and claim verdicts on hand-made numbers (no training)."""

import math

import pytest

from saekit.study import Curve, common_l0s, judge_claims, seed_stat
from saekit.study.claims import FAILS, HOLDS, UNTESTED
from saekit.study.report import format_study


def test_curve_interpolates_linearly_in_log_l0_and_never_extrapolates():
    curve = Curve.from_points([(64.0, 0.10), (16.0, 0.30), (None, 0.5), (32.0, None)])
    assert curve.l0 == (16.0, 64.0)
    assert curve.at(32.0) == pytest.approx(0.20)  # halfway in log between 16 and 64
    assert curve.at(16.0) == 0.30
    assert curve.at(15.9) is None and curve.at(64.1) is None


def test_common_l0s_are_the_ks_inside_every_curve_else_a_grid_over_the_overlap():
    a = Curve.from_points([(16.0, 1), (32.0, 1), (64.0, 1)])
    b = Curve.from_points([(17.0, 1), (34.0, 1), (66.0, 1)])
    assert common_l0s([a, b], ks=(16, 32, 64)) == [32.0, 64.0]
    c = Curve.from_points([(20.0, 1), (40.0, 1)])
    grid = common_l0s([a, c], ks=(16, 32, 64))  # only 32 inside [20, 40]: a geometric grid instead
    assert grid[0] == pytest.approx(20.0) and grid[-1] == pytest.approx(40.0)
    assert grid[1] == pytest.approx(math.sqrt(800.0))
    assert common_l0s([a, Curve.from_points([(100.0, 1), (200.0, 1)])], ks=(16,)) == []
    assert common_l0s([a, b], ks=(16,), requested=(20.0, 70.0)) == [20.0]


def test_seed_stat_is_mean_and_half_range():
    stat = seed_stat([0.2, None, 0.4])
    assert stat.mean == pytest.approx(0.3) and stat.spread == pytest.approx(0.1) and stat.n == 2
    assert seed_stat([None]) is None


def _runs(name, sae_method, fvus_by_seed, *, l0s=(16.0, 32.0, 64.0), ce=None, dead=0.0):
    rows = []
    for seed, fvus in enumerate(fvus_by_seed):
        for i, (l0, fvu) in enumerate(zip(l0s, fvus, strict=True)):
            ce_value = None if ce is None else ce[seed][i]
            rows.append(
                {"method": name, "sae_method": sae_method, "k": int(l0), "seed": seed, "l0": l0, "fvu": fvu,
                 "ce_recovered": ce_value, "dead": dead}
            )  # fmt: skip
    return rows


TOPK = _runs("topk", "topk", [(0.30, 0.20, 0.12), (0.31, 0.21, 0.13)])


def _verdict(runs, method, claim_fragment):
    claims = judge_claims(runs, baseline="topk", ks=(16, 32, 64))
    return next(c for c in claims if c["method"] == method and claim_fragment in c["claim"])


def test_better_holds_only_when_the_gain_exceeds_the_seed_noise():
    clearly = _runs("batchtopk", "batchtopk", [(0.25, 0.15, 0.09), (0.26, 0.16, 0.10)])
    claim = _verdict(TOPK + clearly, "batchtopk", "lower FVU")
    assert claim["verdict"] == HOLDS
    assert [p["l0"] for p in claim["points"]] == [16.0, 32.0, 64.0]
    assert claim["points"][1]["gain"] == pytest.approx(0.05)
    assert claim["points"][1]["noise"] == pytest.approx(math.hypot(0.005, 0.005))
    # a 0.002 gain is inside the 0.007 noise of the two seeds: not demonstrated
    marginal = _runs("batchtopk", "batchtopk", [(0.298, 0.198, 0.118), (0.308, 0.208, 0.128)])
    assert _verdict(TOPK + marginal, "batchtopk", "lower FVU")["verdict"] == FAILS
    worse = _runs("batchtopk", "batchtopk", [(0.40, 0.30, 0.20), (0.40, 0.30, 0.20)])
    assert _verdict(TOPK + worse, "batchtopk", "lower FVU")["verdict"] == FAILS


def test_better_is_judged_at_equal_l0_not_at_equal_k():
    """A method that spends 25 % more L0 than its k: at equal k it looks better, at equal L0 it is not."""
    shifted = _runs("batchtopk", "batchtopk", [(0.28, 0.19, 0.115)] * 2, l0s=(20.0, 40.0, 80.0))
    claim = _verdict(TOPK + shifted, "batchtopk", "lower FVU")
    assert [p["l0"] for p in claim["points"]] == [32.0, 64.0]
    assert claim["verdict"] == FAILS


def test_no_worse_uses_a_relative_tolerance_for_fvu():
    within = _runs("hierarchical_topk", "hierarchical_topk", [(0.302, 0.201, 0.121), (0.312, 0.211, 0.131)])
    assert _verdict(TOPK + within, "hierarchical_topk", "FVU no worse")["verdict"] == HOLDS
    beyond = _runs("hierarchical_topk", "hierarchical_topk", [(0.33, 0.23, 0.15), (0.34, 0.24, 0.16)])
    assert _verdict(TOPK + beyond, "hierarchical_topk", "FVU no worse")["verdict"] == FAILS


def test_ce_claims_are_higher_is_better():
    topk = _runs("topk", "topk", [(0.3, 0.2, 0.1)] * 2, ce=[(0.95, 0.97, 0.98)] * 2)
    better = _runs("gsae", "gsae", [(0.3, 0.2, 0.1)] * 2, ce=[(0.96, 0.98, 0.99)] * 2)
    assert _verdict(topk + better, "gsae", "CE")["verdict"] == HOLDS
    worse = _runs("gsae", "gsae", [(0.3, 0.2, 0.1)] * 2, ce=[(0.94, 0.96, 0.97)] * 2)
    assert _verdict(topk + worse, "gsae", "CE")["verdict"] == FAILS


def test_no_dead_and_untested_claims():
    fc = _runs("feature_choice", "feature_choice", [(0.3, 0.2, 0.1)] * 2, dead=0.0)
    assert _verdict(TOPK + fc, "feature_choice", "dead")["verdict"] == HOLDS
    fc[3]["dead"] = 0.01
    assert _verdict(TOPK + fc, "feature_choice", "dead")["verdict"] == FAILS
    alone = judge_claims(fc, baseline="topk", ks=(16, 32, 64))
    fvu_claim = next(c for c in alone if "FVU" in c["claim"])
    assert fvu_claim["verdict"] == UNTESTED and "topk" in fvu_claim["reason"]


def test_the_report_prints_every_run_and_every_claim():
    runs = TOPK + _runs("batchtopk", "batchtopk", [(0.25, 0.15, 0.09), (0.26, 0.16, 0.10)])
    study = {"runs": runs, "claims": judge_claims(runs, baseline="topk", ks=(16, 32, 64))}
    text = format_study(study)
    assert sum(line.split()[0] == "batchtopk" for line in text.splitlines() if line.strip()) == 6
    assert "lower FVU than TopK at equal L0 (Bussmann et al. 2024): HOLDS" in text
    assert "0.1550 ± 0.0050 vs topk 0.2050 ± 0.0050" in text


def test_every_claim_names_a_registered_method_and_a_known_metric():
    from saekit.sae import METHODS
    from saekit.study.claims import CLAIMS, LOWER_IS_BETTER

    for claim in CLAIMS:
        assert set(claim.methods) <= set(METHODS), claim  # a typo would leave the claim silently unjudged
        if claim.kind != "no_dead":
            assert claim.metric in LOWER_IS_BETTER and (claim.baseline_metric or "fvu") in LOWER_IS_BETTER


def test_gradient_selected_ce_is_compared_with_the_baselines_plain_ce():
    ce_topk = [(0.90, 0.95, 0.97), (0.90, 0.95, 0.97)]
    topk = _runs("topk", "topk", [(0.30, 0.20, 0.12)] * 2, ce=ce_topk)
    gsae = _runs("gsae", "gsae", [(0.30, 0.20, 0.12)] * 2, ce=ce_topk)
    for row in gsae:
        row["ce_recovered_grad"] = row["ce_recovered"] + 0.01
    plain = _verdict(topk + gsae, "gsae", "plain selection")
    grad = _verdict(topk + gsae, "gsae", "gradient selection")
    assert plain["verdict"] == FAILS  # identical plain CE: no gain
    assert grad["verdict"] == HOLDS and grad["points"][0]["gain"] == pytest.approx(0.01)
    assert [p["baseline"]["mean"] for p in grad["points"]] == pytest.approx([0.90, 0.95, 0.97])
