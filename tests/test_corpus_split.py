"""The embedded corpus's held-out split: by source text, disjoint from training, refused by collection,
read by evaluation, recorded for manifests; and the extra offline sources' text extraction."""

import pytest

from saekit.config import HELDOUT_CORPUS, CollectConfig, EvalConfig, TrainConfig
from saekit.data import corpus_split_info, embedded_corpus_info, embedded_documents, iter_texts
from saekit.data.embedded_corpus import (
    HELDOUT_SHARE,
    build_embedded_records,
    embedded_corpus_path,
    interleave,
    is_heldout_text,
)
from saekit.data.text_sources import SourceText, bible_book_texts, rst_prose
from saekit.errors import ConfigError, CorpusError


def _records():
    import json

    path = embedded_corpus_path()
    embedded_documents()  # builds the cache on first use
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def test_splits_are_disjoint_by_source_text_and_follow_the_hash_rule():
    records = _records()
    train = {(r["source"], r["name"]) for r in records if r["split"] == "train"}
    heldout = {(r["source"], r["name"]) for r in records if r["split"] == "heldout"}
    assert train and heldout and not train & heldout
    assert all((r["split"] == "heldout") == is_heldout_text(r["source"], r["name"]) for r in records)
    share = len(heldout) / (len(train) + len(heldout))
    assert 0.5 * HELDOUT_SHARE < share < 2 * HELDOUT_SHARE
    assert list(iter_texts(HELDOUT_CORPUS)) == [r["text"] for r in records if r["split"] == "heldout"]
    assert list(iter_texts("embedded")) == [r["text"] for r in records if r["split"] == "train"]


def test_default_sources_include_shakespeare_and_sizes_are_recorded():
    info = embedded_corpus_info()
    assert {"stdlib", "shakespeare"} <= set(info["sources"])  # make install installs `shakespeare`
    splits = info["splits"]
    assert splits["train"]["documents"] == len(embedded_documents("train"))
    assert splits["heldout"]["documents"] == len(embedded_documents("heldout"))
    assert corpus_split_info("embedded")["split"] == "train"
    assert corpus_split_info(HELDOUT_CORPUS)["split"] == "heldout"
    assert corpus_split_info("notes.txt") is None


def test_collection_and_live_training_refuse_the_heldout_split():
    with pytest.raises(ConfigError, match="held-out"):
        CollectConfig(corpus=HELDOUT_CORPUS)
    with pytest.raises(CorpusError, match="split"):
        list(iter_texts("embedded:validation"))


def test_eval_of_an_embedded_run_reads_the_heldout_split_from_the_start():
    from saekit.eval.evaluate import plan_heldout

    manifest = {
        "context_length": 32,
        "next_sequence": 900,
        "collect_config": {"model": "tiny", "corpus": "embedded"},
    }
    plan = plan_heldout(TrainConfig(), manifest, EvalConfig())
    assert plan.corpus == HELDOUT_CORPUS and plan.skip_sequences == 0
    explicit = plan_heldout(TrainConfig(), manifest, EvalConfig(corpus="embedded"))
    assert explicit.corpus == "embedded" and explicit.skip_sequences == 900  # the old rule, when asked for


def test_build_is_deterministic_and_interleaves_sources_in_proportion_within_each_split():
    text = "Paragraph {} of {}, with words enough."
    # by the hash rule, a/t6, b/t0 and b/t9 are held out; the other names are training texts
    sources = {
        "a": [SourceText("a", f"t{i}", text.format(i, "a")) for i in range(1, 13)],
        "b": [SourceText("b", f"t{i}", text.format(i, "b")) for i in (0, 1, 2, 9)],
    }
    first = build_embedded_records(sources)
    assert first == build_embedded_records(sources) and len(first) == 16
    train = [r["source"] for r in first if r["split"] == "train"]
    heldout = [(r["source"], r["name"]) for r in first if r["split"] == "heldout"]
    assert train.index("b") < 6 and train[-1] == "a"  # b is spread over the stream, not appended
    assert heldout[0][0] != heldout[1][0]  # the held-out prefix mixes sources too
    assert sorted(heldout) == [("a", "t6"), ("b", "t0"), ("b", "t9")]
    assert interleave([[1, 2, 3, 4], ["x", "y"]]) == [1, "x", 2, 3, "y", 4]


def test_heldout_prefix_of_the_real_corpus_mixes_sources():
    first = [r["source"] for r in _records() if r["split"] == "heldout"][:12]
    assert len(set(first)) >= min(3, len(embedded_corpus_info()["sources"]))


def test_rst_prose_strips_markup_directives_and_code():
    rst = (
        "Title here\n==========\n\n"
        ".. function:: len(s)\n\n   Return the length.\n\n"
        "The :func:`len` function returns the number of items in an object such as ``[1, 2]``. "
        "See `the tutorial <https://x>`_ for more::\n\n"
        "   code = block()\n\n"
        "+-----+-----+\n| a   | b   |\n+-----+-----+\n"
    )
    assert rst_prose(rst) == (
        "The len function returns the number of items in an object such as [1, 2]. See the tutorial for more:"
    )


def test_bible_books_group_chapters_and_drop_references():
    verses = "Ge1:1 In the beginning.\nGe1:2 And the earth.\nGe2:1 Thus the heavens.\n1Sa1:1 Now there was."
    books = bible_book_texts(verses)
    assert [b.name for b in books] == ["Ge", "1Sa"]
    assert books[0].text == "In the beginning. And the earth.\n\nThus the heavens."
