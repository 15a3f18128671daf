"""Corpora (embedded, .txt, directory, .jsonl) and chunking into BOS-led sequences."""

import json

import pytest
import torch

from saekit.data import chunk_tokens, corpus_fingerprint, embedded_documents, iter_texts, token_batches
from saekit.data.text_sources import (
    SourceText,
    prose_of,
    shakespeare_texts,
    stdlib_docstring_texts,
    strip_gutenberg_boilerplate,
)
from saekit.errors import CorpusError
from saekit.models.tiny import load_tiny_tokenizer

DOCS = [
    "The first document talks about lists and tuples.",
    "A second one, about dictionaries and sets.",
    "Third: strings are immutable sequences of characters.",
]


@pytest.fixture(scope="module")
def tok():
    return load_tiny_tokenizer()


# ---------------------------------------------------------------------------------------- formats


def test_txt_file_is_one_document(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("line one\nline two\n")
    assert list(iter_texts(str(path))) == ["line one\nline two\n"]


def test_directory_is_recursive_sorted_and_keeps_only_txt_and_md(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.md").write_text("md text")
    (tmp_path / "b" / "a.txt").write_text("nested")
    (tmp_path / "c.txt").write_text("top")
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "ignored.py").write_text("x = 1")
    assert list(iter_texts(str(tmp_path))) == ["nested", "md text", "top"]


def test_directory_without_text_files_is_an_error(tmp_path):
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(CorpusError, match=r"\.txt or \.md"):
        list(iter_texts(str(tmp_path)))


def test_jsonl_reads_the_chosen_field(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps({"body": d, "id": i}) for i, d in enumerate(DOCS)) + "\n\n")
    assert list(iter_texts(str(path), text_field="body")) == DOCS


def test_jsonl_missing_field_names_line_and_fields(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"content": "no", "id": 2}) + "\n")
    with pytest.raises(CorpusError) as info:
        list(iter_texts(str(path)))
    assert "line 2" in str(info.value) and "'content'" in str(info.value) and "'id'" in str(info.value)


def test_jsonl_invalid_json_names_the_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"text": "ok"}) + "\n{not json\n")
    with pytest.raises(CorpusError, match="line 2"):
        list(iter_texts(str(path)))


def test_missing_path_says_what_is_accepted(tmp_path):
    with pytest.raises(CorpusError, match=r"embedded.*\.txt.*\.jsonl"):
        list(iter_texts(str(tmp_path / "nope.txt")))
    (tmp_path / "data.csv").write_text("a")
    with pytest.raises(CorpusError, match="unsupported extension"):
        list(iter_texts(str(tmp_path / "data.csv")))


def test_fingerprint_is_stable_and_tracks_content(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("alpha beta")
    first = corpus_fingerprint(str(path))
    assert corpus_fingerprint(str(path)) == first and len(first) == 64
    path.write_text("alpha beta gamma")
    assert corpus_fingerprint(str(path)) != first


# ---------------------------------------------------------------------------------------- embedded


def test_embedded_corpus_is_real_prose_and_deterministic():
    docs = embedded_documents()
    assert len(docs) > 100 and sum(map(len, docs)) > 500_000
    assert all(d.strip() for d in docs)
    assert not any(line.lstrip().startswith(">>>") for d in docs for line in d.splitlines())  # no doctests
    assert list(iter_texts("embedded")) == docs
    assert corpus_fingerprint("embedded") == corpus_fingerprint("embedded")
    assert corpus_fingerprint("embedded") != corpus_fingerprint("embedded:heldout")


def test_docstring_filter_drops_doctests_code_and_short_docstrings(tmp_path):
    kept = "Return the number of items in the container, counting nested containers once each."
    assert (
        prose_of(f"{kept}\n\n>>> len([1, 2])\n2\n\n    for x in y:\n        z(x)\n\n{{a: [b], c: (d)}}")
        == kept
    )
    (tmp_path / "mod.py").write_text(f'"""{kept}"""\n\ndef f():\n    """Short."""\n')
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "t.py").write_text(f'"""{kept} In tests."""\n')
    assert stdlib_docstring_texts(tmp_path) == [SourceText("stdlib", "mod.py", kept)]


def test_shakespeare_texts_strip_gutenberg_boilerplate(tmp_path):
    body = "ACT I. SCENE I.\n\nEnter two gentlemen."
    wrapped = (
        f"Project Gutenberg header\n*** START OF THIS EBOOK ***\n{body}\n*** END OF THIS EBOOK ***\nlicence"
    )
    assert strip_gutenberg_boilerplate(wrapped) == body
    assert strip_gutenberg_boilerplate(body) == body
    (tmp_path / "hamlet_gut.txt").write_text(wrapped)
    (tmp_path / "hamlet_gut_f.txt").write_text("folio variant")
    assert shakespeare_texts(tmp_path) == [SourceText("shakespeare", "hamlet_gut", body)]


# ---------------------------------------------------------------------------------------- chunking


def _stream(tok, docs):
    ids = []
    for i, doc in enumerate(docs):
        if i:
            ids.append(tok.eos_token_id)
        ids.extend(tok(doc, add_special_tokens=False)["input_ids"])
    return ids


def test_chunks_start_with_bos_and_tile_the_token_stream(tok):
    ctx = 9
    chunks = list(chunk_tokens(DOCS, tok, ctx, bos_id=tok.bos_token_id))
    stream = _stream(tok, DOCS)
    assert len(chunks) == len(stream) // (ctx - 1) > 1
    for chunk in chunks:
        assert chunk.shape == (ctx,) and chunk.dtype == torch.long and chunk[0] == tok.bos_token_id
    assert torch.cat([c[1:] for c in chunks]).tolist() == stream[: len(chunks) * (ctx - 1)]
    assert tok.eos_token_id in torch.cat(chunks).tolist()  # documents are separated by EOS


def test_skip_and_max_sequences(tok):
    docs = embedded_documents()[:5]
    full = list(chunk_tokens(docs, tok, 16, bos_id=tok.bos_token_id))
    skipped = list(chunk_tokens(docs, tok, 16, bos_id=tok.bos_token_id, skip_sequences=3, max_sequences=4))
    assert len(skipped) == 4
    assert all(torch.equal(a, b) for a, b in zip(skipped, full[3:7], strict=True))


def test_token_batches_stack_chunks(tok):
    docs = embedded_documents()[:5]
    batches = list(token_batches(docs, tok, 16, 4, bos_id=tok.bos_token_id, max_sequences=10))
    assert [b.shape for b in batches] == [(4, 16), (4, 16), (2, 16)]
    assert torch.all(torch.cat(batches)[:, 0] == tok.bos_token_id)


def test_empty_or_too_short_corpus_is_an_error(tok):
    with pytest.raises(CorpusError, match="empty"):
        list(chunk_tokens([], tok, 16, bos_id=tok.bos_token_id))
    with pytest.raises(CorpusError, match="empty or shorter"):
        list(chunk_tokens(["tiny"], tok, 16, bos_id=tok.bos_token_id))
    with pytest.raises(CorpusError, match="skip_sequences"):
        list(chunk_tokens(DOCS, tok, 4, bos_id=tok.bos_token_id, skip_sequences=10_000))
