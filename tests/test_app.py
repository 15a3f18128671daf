"""The Streamlit workbench under AppTest: every page on a real tiny run, before and after interaction.

Expected values come from the saekit API on the same run (index cards, eval.json, steering calls), so a
page that shows the wrong latent, run or numbers fails.
"""

import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from fixtures_run import TOPK_RUN, WIDE_K_RUN, build_fixture_runs
from streamlit.testing.v1 import AppTest

from saekit.analysis import LatentIndex, coefficient_sweep, encode_text, steer
from saekit.analysis.dead import run_timeline
from saekit.app_launcher import RUNS_ENV
from saekit.runs import load_eval, load_metrics, load_run_model, load_run_sae

APP = Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py"
TIMEOUT = 120  # the first run in a process imports TransformerLens and loads the model


@pytest.fixture(scope="session")
def runs_dir(tmp_path_factory):
    return build_fixture_runs(tmp_path_factory.getbasetemp() / "saekit_runs")


@pytest.fixture(scope="session")
def index(runs_dir):
    return LatentIndex.open(runs_dir / TOPK_RUN)


@pytest.fixture(scope="session")
def model_and_sae(runs_dir):
    return load_run_model(runs_dir / TOPK_RUN), load_run_sae(runs_dir / TOPK_RUN)


@contextmanager
def started_with(runs_dir: Path):
    """The app's start directory, as `saekit app RUNS_DIR` passes it (read on a session's first run)."""
    old = os.environ.get(RUNS_ENV)
    os.environ[RUNS_ENV] = str(runs_dir)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(RUNS_ENV)
        else:
            os.environ[RUNS_ENV] = old


def open_app(runs_dir: Path, page: str | None = None, run: str | None = None) -> AppTest:
    """The app started with RUNS_DIR = `runs_dir` (it serves nothing outside it)."""
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    if run is not None:
        at.session_state["app_run"] = run
    with started_with(runs_dir):
        at.run()
    if page is not None:
        at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def plotly_specs(at: AppTest) -> dict[str, dict]:
    """Plotly figures on the page by their widget key suffix (e.g. 'overview_curves')."""
    return {el.key: json.loads(el.proto.spec) for el in at.get("plotly_chart")}


def table(at: AppTest, *columns: str):
    """The first dataframe on the page having all `columns` (AppTest does not expose dataframe keys)."""
    for frame in at.dataframe:
        if set(columns) <= set(frame.value.columns):
            return frame.value
    raise AssertionError(f"no table with columns {columns}")


def markdown_text(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown)


# ---------------------------------------------------------------------------------------- overview


def test_overview_lists_runs_curves_and_eval(runs_dir):
    at = open_app(runs_dir)
    assert at.title[0].value == "Overview"
    table = at.dataframe[0].value
    assert list(table["name"]) == [TOPK_RUN, WIDE_K_RUN]
    assert list(table["k"]) == [4, 8]
    fvu = load_eval(runs_dir / TOPK_RUN)["heldout"]["fvu"]
    assert table["FVU"][0] == pytest.approx(fvu)
    assert "no index" in table["status"][1] and "no index" not in table["status"][0]

    curves = plotly_specs(at)["overview_curves"]
    metrics = load_metrics(runs_dir / TOPK_RUN)
    by_name = {trace["name"]: trace for trace in curves["data"]}
    assert set(by_name) == {"loss", "fvu", "l0", "dead_fraction"}
    assert by_name["loss"]["x"] == [row["tokens"] for row in metrics]
    assert by_name["dead_fraction"]["y"] == pytest.approx([row["dead_fraction"] for row in metrics])
    eval_rows = at.dataframe[1].value
    fvu_row = eval_rows[eval_rows["metric"] == "FVU"]
    assert float(fvu_row["heldout"].iloc[0]) == pytest.approx(fvu)


def test_overview_follows_the_sidebar_run(runs_dir):
    at = open_app(runs_dir)
    assert at.sidebar.selectbox(key="app_run_box").options == [TOPK_RUN, WIDE_K_RUN]
    at.sidebar.selectbox(key="app_run_box").set_value(WIDE_K_RUN).run()
    assert any(h.value == f"Run: {WIDE_K_RUN}" for h in at.subheader)
    assert at.json[0].value and json.loads(at.json[0].value)["sae"]["params"]["k"] == 8
    at.switch_page("pages/latents.py").run()  # the choice survives a page switch
    assert any(f"{WIDE_K_RUN} has no latent index" in i.value for i in at.info)


def test_missing_or_empty_runs_dir_says_how_to_fix(tmp_path):
    at = open_app(tmp_path / "nope")
    assert any("does not exist" in e.value for e in at.error)
    empty = tmp_path / "empty"
    empty.mkdir()
    at = open_app(empty, page="latents")
    assert any("no runs under" in e.value and "saekit train" in e.value for e in at.error)


# ---------------------------------------------------------------------------------------- latents


def test_latent_card_matches_the_index(runs_dir, index):
    at = open_app(runs_dir, "latents")
    latent = index.top_by("frequency", n=1)[0]
    at.number_input(key="latents_id").set_value(latent).run()
    assert at.subheader[0].value == f"Latent {latent}"
    card = index.latent(latent)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["frequency"] == f"{card.frequency:.2e}"
    assert metrics["max activation"] == f"{card.max_activation:.3f}"
    text = markdown_text(at)
    assert text.count("saekit-heatmap") == len(card.top_examples) + len(card.quantile_examples)
    assert f">{card.top_examples[0].activation:.2f}<" in text
    specs = plotly_specs(at)
    assert specs["latents_histogram"]["data"][0]["y"] == card.histogram_counts
    assert sum(specs["latents_density"]["data"][0]["y"]) == index.d_sae
    neighbours = table(at, "latent", "cosine")
    assert list(neighbours["latent"]) == [i for i, _ in card.neighbours]


def test_ranking_then_show_opens_that_latent(runs_dir, index):
    at = open_app(runs_dir, "latents")
    at.selectbox(key="latents_sort_metric").set_value("max_activation").run()
    ranking = table(at, "latent", "max_activation")
    expected = index.top_by("max_activation", n=25)
    assert list(ranking["latent"]) == expected
    at.selectbox(key="latents_ranking_pick").set_value(expected[2]).run()
    at.button(key="latents_ranking_show").click().run()
    assert at.subheader[0].value == f"Latent {expected[2]}"


def test_find_by_token_lists_the_api_matches(runs_dir, index):
    card = index.latent(index.top_by("frequency", n=1)[0])
    token = card.top_examples[0].tokens[card.top_examples[0].centre]
    at = open_app(runs_dir, "latents")
    at.text_input(key="latents_token_token").input(token).run()
    expected = index.find_by_token(token, side="input")
    if expected:
        assert at.selectbox(key="latents_token_pick").options == [str(i) for i in expected]
    else:
        assert any(c.value == "no matching latents" for c in at.caption)
    at.text_input(key="latents_logit_token").input(card.promoted[0][0]).run()
    expected_out = index.find_by_token(card.promoted[0][0], side="output")
    assert card.latent in expected_out
    assert at.selectbox(key="latents_logit_pick").options == [str(i) for i in expected_out]
    at.text_input(key="latents_token_token").input("surely-not-a-token").run()
    assert any("no vocabulary entry" in w.value for w in at.warning)


def test_typed_text_shows_which_latents_fire_where(runs_dir, model_and_sae):
    text = "The cat sat on the mat."
    at = open_app(runs_dir, "latents")
    at.text_area(key="latents_text").input(text).run()
    at.button(key="latents_encode").click().run()
    acts = encode_text(*model_and_sae, text)
    rendered = markdown_text(at)
    for latent in acts.latents[:8]:
        assert f">latent {latent}<" in rendered
    assert len(table(at, "position", "token", "latents")) == len(acts.tokens)
    at.selectbox(key="latents_text_pick").set_value(acts.latents[1]).run()
    at.button(key="latents_text_show").click().run()
    assert at.subheader[0].value == f"Latent {acts.latents[1]}"


# ---------------------------------------------------------------------------------------- steering


def test_steering_generates_default_and_steered_text(runs_dir, model_and_sae):
    at = open_app(runs_dir, "steering")
    # form widgets: set every field, then submit (a run() in between would drop the unsubmitted values)
    at.text_input(key="steer_latents").input("3, 5")
    at.text_input(key="steer_coefs").input("20")
    at.number_input(key="steer_temperature").set_value(0.0)
    at.number_input(key="steer_max_new_tokens").set_value(6)
    at.button(key="steer_generate").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    expected = steer(
        *model_and_sae, "From my experience,", {3: 20.0, 5: 20.0}, max_new_tokens=6, seed=0, temperature=0.0
    )
    generations = [m.value for m in at.markdown if "saekit-generation" in m.value]
    assert len(generations) == 2
    assert expected.default_text.split()[0] in generations[0] or not expected.default_text.strip()
    kl = next(m.value for m in at.metric if m.label.startswith("KL"))
    assert kl == f"{expected.kl:.4f} nats"
    shift = table(at, "token_id", "p_default")
    assert list(shift["token_id"]) == [row["token_id"] for row in expected.next_token_shift]


def test_coefficient_sweep_and_scores(runs_dir, model_and_sae, index):
    at = open_app(runs_dir, "steering")
    at.text_input(key="steer_latents").input("7")
    at.number_input(key="steer_max_new_tokens").set_value(1)
    at.button(key="steer_generate").click().run()
    assert at.selectbox(key="steer_sweep_latent").value == 7
    at.text_input(key="steer_sweep_coefs").input("0, 4, 16").run()
    at.text_input(key="steer_target").input(" the").run()
    at.button(key="steer_sweep").click().run()
    spec = plotly_specs(at)["steer_sweep_plot"]
    rows = coefficient_sweep(*model_and_sae, "From my experience,", 7, [0, 4, 16], target_token=" the")
    assert spec["data"][0]["x"] == [0.0, 4.0, 16.0]
    assert spec["data"][0]["y"] == pytest.approx([r["kl"] for r in rows], abs=1e-6)
    assert spec["data"][0]["y"][0] == pytest.approx(0.0, abs=1e-4)  # coefficient 0 leaves the model alone
    assert spec["data"][1]["y"] == pytest.approx([r["target_logit"] for r in rows], abs=1e-4)
    scores = {m.label: m.value for m in at.metric}
    assert scores["output score"] == f"{index.latent(7).output_score:.4f}"


def test_steering_rejects_bad_latents(runs_dir):
    at = open_app(runs_dir, "steering")
    at.text_input(key="steer_latents").input("three")
    at.button(key="steer_generate").click().run()
    assert any("not a valid int" in e.value for e in at.error)
    at.text_input(key="steer_latents").input("99999")
    at.button(key="steer_generate").click().run()
    assert any("out of range" in e.value for e in at.error)
    assert not at.exception, [e.value for e in at.exception]


# ---------------------------------------------------------------------------------------- dead latents


def test_dead_latents_page_by_tracker_and_by_index(runs_dir, index):
    at = open_app(runs_dir, "dead_latents")
    timeline = run_timeline(runs_dir / TOPK_RUN)
    n_dead = int(timeline.dead.sum())
    assert f"**{n_dead} dead latents** of {index.d_sae}" in markdown_text(at)
    timeline_table = table(at, "latent", "died at (token)")
    assert list(timeline_table["latent"]) == timeline.dead.nonzero().flatten().tolist()
    specs = plotly_specs(at)
    hist = load_eval(runs_dir / TOPK_RUN)["heldout"]["log10_density_histogram"]
    assert specs["dead_density_plot"]["data"][0]["y"] == hist["counts"]
    for key in ("dead_cosine_plot", "dead_subspace_plot", "dead_bias_plot", "dead_preact_plot"):
        assert key in specs
    assert at.get("download_button")[0].proto.label.startswith("Download dead-latent report")

    at.radio(key="dead_source").set_value("index: never fired on held-out text").run()
    n_index_dead = int((index.densities() == 0).sum())
    assert f"**{n_index_dead} dead latents** of {index.d_sae}" in markdown_text(at)


def test_dead_page_without_index_offers_tracker_only(runs_dir):
    at = open_app(runs_dir, "dead_latents", run=WIDE_K_RUN)
    assert at.radio(key="dead_source").options == ["training tracker (last checkpoint)"]


# ---------------------------------------------------------------------------------------- compare


def test_compare_pareto_and_l0_histograms(runs_dir):
    at = open_app(runs_dir, "compare")
    specs = plotly_specs(at)
    results = [load_eval(runs_dir / name) for name in (TOPK_RUN, WIDE_K_RUN)]
    scatter = specs["compare_pareto_fvu"]["data"][0]
    assert scatter["text"] == [TOPK_RUN, WIDE_K_RUN]
    assert scatter["x"] == pytest.approx([r["heldout"]["l0_mean"] for r in results])
    assert scatter["y"] == pytest.approx([r["heldout"]["fvu"] for r in results])
    l0 = {trace["name"]: trace for trace in specs["compare_l0_plot"]["data"]}
    assert sum(l0[WIDE_K_RUN]["y"]) == pytest.approx(1.0)
    assert max(range(len(l0[WIDE_K_RUN]["y"])), key=l0[WIDE_K_RUN]["y"].__getitem__) <= 8
    at.multiselect(key="compare_runs").set_value([WIDE_K_RUN]).run()
    assert plotly_specs(at)["compare_pareto_fvu"]["data"][0]["text"] == [WIDE_K_RUN]


def test_compare_draws_per_level_curves_when_eval_has_them(runs_dir, tmp_path):
    """Per-k metrics in the layout `saekit eval` writes for multi-k runs (produced by its own function)."""
    from saekit.activations import open_cache
    from saekit.eval.levels import level_metrics
    from saekit.sae import get_method

    runs = tmp_path / "runs"
    shutil.copytree(runs_dir / WIDE_K_RUN, runs / "levels_run")
    sae = load_run_sae(runs_dir / WIDE_K_RUN)
    rows = open_cache(runs_dir / "cache", sae.hookpoint).rows(500)
    # The per-k report of a hierarchical_topk run, computed on this TopK SAE (the report only reads W/b).
    levels = level_metrics(sae, rows, report=get_method("hierarchical_topk").levels, levels=[2, 4, 8])
    assert levels["kind"] == "k" and levels["levels"] == [2, 4, 8]
    result = load_eval(runs / "levels_run")
    result["levels"] = levels
    (runs / "levels_run" / "eval.json").write_text(json.dumps(result))
    at = open_app(runs, "compare")
    spec = plotly_specs(at)["compare_levels_plot"]
    assert spec["data"][0]["x"] == [2, 4, 8]
    assert spec["data"][0]["y"] == pytest.approx(levels["fvu"])
    assert spec["layout"]["xaxis"]["title"]["text"] == "k"
    at.selectbox(key="compare_level_metric").set_value("l0").run()
    assert plotly_specs(at)["compare_levels_plot"]["data"][0]["y"] == pytest.approx(levels["l0"])


# ---------------------------------------------------------------------------------------- timing


def test_latent_page_render_time_on_a_16k_index(tmp_path, runs_dir):
    """Server-side time of the latent page for a 16 384-latent index (goal: well under 1 s warm)."""
    from saekit.analysis import build_index
    from saekit.config import SaeConfig, TrainConfig, save_config
    from saekit.sae import Sae

    run = tmp_path / "runs" / "wide16k"
    base = load_run_sae(runs_dir / TOPK_RUN)
    cfg = TrainConfig(
        sae=SaeConfig.make("topk", k=8, d_sae=16384),
        cache_dir=str(runs_dir / "cache"),
        hookpoint=base.hookpoint,
        run_dir=str(run),
    )
    sae = Sae(base.d_in, cfg.sae, act_scale=base.act_scale, hookpoint=base.hookpoint, model_id="tiny")
    run.mkdir(parents=True)
    save_config(cfg, run / "config.yaml")
    sae.save(run / "final")
    build_index(
        run,
        model=load_run_model(runs_dir / TOPK_RUN),
        num_sequences=8,
        progress=False,
        compute_output_scores=False,
    )
    at = open_app(run.parent)
    start = time.perf_counter()
    at.switch_page("pages/latents.py").run()  # cold: opens the index, bins 16 384 densities
    cold = time.perf_counter() - start
    start = time.perf_counter()
    at.number_input(key="latents_id").set_value(12345).run()
    warm = time.perf_counter() - start
    assert at.subheader[0].value == "Latent 12345" and not at.exception
    print(f"latent page, d_sae=16384: first render {cold * 1000:.0f} ms, rerun {warm * 1000:.0f} ms")
    assert warm < 5.0, f"{warm:.2f} s"  # generous bound for a shared CI core; the goal is < 1 s
