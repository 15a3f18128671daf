"""Latent notes, honest quantile samples, neighbour previews, card export, run settings at a glance and
the pages on a run that has no training log (an imported SAE): the workbench as a tool one keeps open.

Expected values come from the saekit API on the same fixture runs.
"""

import json
import shutil
import sys

import pytest
from app_testing import (
    APP,
    fixture_index,
    fixture_runs,
    keyed_table,
    markdown_text,
    open_app,
    plotly_specs,
)
from fixtures_run import TOPK_RUN

sys.path.insert(0, str(APP.parent))  # the app's own modules import as `components`
from components.export import png_renderer_missing  # noqa: E402

from saekit.analysis import LatentIndex
from saekit.analysis.notes import NOTES_FILE, LatentNotes
from saekit.analysis.render import card_html, shown_token
from saekit.analysis.search import matching_tokens
from saekit.errors import RunDirError
from saekit.run_summary import pareto_front, run_hyperparameters
from saekit.runs import list_runs


@pytest.fixture(scope="session")
def runs_dir(tmp_path_factory):
    return fixture_runs(tmp_path_factory)


@pytest.fixture
def own_runs(runs_dir, tmp_path):
    """A private copy of the indexed run (notes are written into it)."""
    shutil.copytree(runs_dir / TOPK_RUN, tmp_path / "runs" / "topk")
    return tmp_path / "runs"


# ---------------------------------------------------------------------------------------- library


def test_matching_tokens_ignore_leading_space_and_case():
    vocab = ["the", " the", "The", " The", " THE", "then", " theme", "\n", " ", "x"]
    assert matching_tokens(vocab, "the") == [(0, "the"), (1, " the"), (2, "The"), (3, " The"), (4, " THE")]
    assert matching_tokens(vocab, " The")[0] == (3, " The")  # the exact spelling first
    assert matching_tokens(vocab, " ") == [(8, " ")]  # whitespace matches only itself
    assert matching_tokens(vocab, "zebra") == []


def test_notes_survive_reindexing_and_reject_bad_input(own_runs):
    run = own_runs / "topk"
    notes = LatentNotes.load(run)
    notes.set(3, label="  French   words ", note="fires on ' le'")
    assert LatentNotes.load(run).describe(3) == "latent 3 · French words"
    shutil.rmtree(run / "index")  # what `saekit index` does: the index directory is replaced whole
    assert LatentNotes.load(run).note(3) == "fires on ' le'"
    with pytest.raises(RunDirError, match="keep it under"):
        notes.set(4, label="x" * 200)
    notes.set(3)  # empty label and note: the entry is removed
    assert LatentNotes.load(run).labelled() == {}
    (run / NOTES_FILE).write_text("{not json")
    with pytest.raises(RunDirError, match="not a valid notes file"):
        LatentNotes.load(run)


def test_quantile_samples_never_repeat_top_examples(runs_dir):
    index = fixture_index(runs_dir)
    repeats = 0
    for latent in range(index.d_sae):
        card = index.latent(latent)
        top = {ex.key for ex in card.top_examples}
        assert not top & {ex.key for ex in card.quantile_examples}
        repeats += card.quantile_repeats
    assert repeats > 0  # the fixture has rare latents whose few firings were sampled twice


def test_card_html_is_standalone(runs_dir):
    index = fixture_index(runs_dir)
    card = index.latent(index.top_by("frequency", n=1)[0])
    page = card_html(card, label="a <label>", note="n")
    assert page.startswith("<!doctype html>") and "&lt;label&gt;" in page
    assert page.count("saekit-heatmap") == len(card.top_examples) + len(card.quantile_examples)
    assert "http" not in page and "<script" not in page  # opens offline, fetches nothing
    assert shown_token(card.promoted[0][0]).replace("<", "&lt;") in page


def test_pareto_front_and_run_settings(runs_dir):
    points = [{"L0": 4, "FVU": 0.3}, {"L0": 8, "FVU": 0.2}, {"L0": 6, "FVU": 0.35}, {"L0": 9, "FVU": None}]
    assert pareto_front(points, "L0", "FVU") == [points[0], points[1]]
    assert pareto_front(points, "L0", "FVU", higher_is_better=True) == [points[0], points[2]]
    run = next(r for r in list_runs(runs_dir) if r.name == TOPK_RUN)
    settings = run_hyperparameters(run)
    assert settings["method"] == "topk" and settings["k"] == "4" and settings["d_sae"] == "128"
    assert settings["lr"].endswith("(auto)") and "None" not in json.dumps(settings)


# ---------------------------------------------------------------------------------------- app


def test_label_saved_on_the_card_shows_everywhere(own_runs):
    index = LatentIndex.open(own_runs / "topk")
    latent = index.top_by("max_activation", n=1)[0]
    neighbour = index.latent(latent).neighbours[0][0]
    at = open_app(own_runs, "latents")
    at.number_input(key="latents_id").set_value(neighbour).run()
    at.text_input(key="latents_note_label").input("quote marks")
    at.text_area(key="latents_note_text").input("opening quotes in code")
    at.button(key="latents_note_save").click().run()
    assert LatentNotes.load(own_runs / "topk").label(neighbour) == "quote marks"
    assert at.subheader[0].value == f"Latent {neighbour} · quote marks"

    at.number_input(key="latents_id").set_value(latent).run()
    neighbours = keyed_table(at, "latents_neighbours")
    assert list(neighbours["latent"]) == [i for i, _ in index.latent(latent).neighbours]
    row = neighbours[neighbours["latent"] == neighbour].iloc[0]
    preview = index.preview(neighbour)
    assert row["label"] == "quote marks" and row["promotes"] == " ".join(
        map(shown_token, preview["promotes"])
    )
    labelled = keyed_table(at, "latents_labelled_table")
    assert list(labelled["latent"]) == [neighbour]
    assert at.get("download_button")[0].proto.label == "Download card (HTML)"
    if png_renderer_missing():  # no chromium/playwright here: the card says so instead of a button
        assert any("PNG export needs" in c.value for c in at.caption)
    else:
        at.button(key="latents_export_png").click().run()
        labels = [b.proto.label for b in at.get("download_button")]
        assert "Download card (PNG)" in labels and not at.warning, [w.value for w in at.warning]

    at.switch_page("pages/steering.py").run()  # the steering card names the latent the same way
    at.text_input(key="steer_latents").input(str(neighbour))
    at.button(key="steer_generate").click().run()
    assert f"**latent {neighbour} · quote marks**" in markdown_text(at)


def test_every_page_on_a_run_without_training_log_or_eval(own_runs):
    """What an imported SAE looks like: config.yaml + final/ only."""
    run = own_runs / "topk"
    for name in ("metrics.jsonl", "eval.json"):
        (run / name).unlink()
    shutil.rmtree(run / "checkpoints")
    at = open_app(own_runs)
    infos = " ".join(i.value for i in at.info)
    assert "No training log" in infos and "Not evaluated yet" in infos
    chips = next(m.value for m in at.markdown if "saekit-settings" in m.value)
    assert "lr" not in chips and "None" not in chips and "d_sae" in chips
    for page in ("latents", "steering", "dead_latents", "compare"):
        at.switch_page(f"pages/{page}.py").run()
        assert not at.exception, (page, [e.value for e in at.exception])
        assert not at.error, (page, [e.value for e in at.error])
    assert "latents_histogram" not in plotly_specs(at)  # compare: nothing evaluated, said in words
    assert any("No run has eval.json" in i.value for i in at.info)
