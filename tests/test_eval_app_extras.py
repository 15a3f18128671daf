"""The Overview page's evaluation-extras component renders every block of an eval.json (AppTest)."""

from pathlib import Path

from streamlit.testing.v1 import AppTest

APP_DIR = Path(__file__).resolve().parent.parent / "app"

RESULT = {
    "heldout": {"l0_mean": 32.4},
    "sparsity_target": {
        "target_l0": 32.0,
        "calibration": {"estimator": "global_quantile", "rows": 16384, "l0_before": 35.1, "l0_after": 32.0},
    },
    "extras": {
        "shrinkage": {"l2_ratio": 0.93, "relative_reconstruction_bias": 0.97},
        "reconstruction_quality": {"cossim": 0.9},
        "dense_latents": {"fraction_above_0.1": 0.01, "firing_share_above_0.1": 0.2},
        "duplicate_latents": {"decoder": {"max_cosine": 0.95, "fraction_above_0.9": 0.001}},
        "prefix_fvu": {
            "widths": [1, 2, 4],
            "fvu_frequency_order": [0.8, 0.5, 0.2],
            "fvu_index_order": [0.9, 0.6, 0.2],
        },
        "seed_consistency": {"mean_max_cosine_a_to_b": 0.7, "matching": "greedy"},
        "absorption": {"mean": {"mean_absorption_fraction_score": 0.1, "mean_full_absorption_score": 0.05}},
    },
}


def _script(result) -> str:
    header = f"import sys\nsys.path.insert(0, {str(APP_DIR)!r})\nfrom components import eval_extras\n"
    return header + f"eval_extras.show({result!r})\n"


def test_component_shows_target_calibration_extras_and_prefix_plot():
    at = AppTest.from_string(_script(RESULT), default_timeout=60).run()
    assert not at.exception
    frames = [df.value for df in at.dataframe]
    text = " ".join(str(f.to_dict()) for f in frames)
    assert "32.40" in text and "32.00" in text and "global_quantile" in text and "35.10" in text
    assert "0.9300" in text and "mean_absorption_fraction_score" in text
    assert len(at.get("plotly_chart")) == 1


def test_component_shows_nothing_for_an_old_eval_json():
    at = AppTest.from_string(_script({}), default_timeout=60).run()
    assert not at.exception and len(at.dataframe) == 0 and len(at.markdown) == 0
