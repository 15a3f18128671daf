"""Text data: corpora (embedded demo, .txt, directories, .jsonl) and their cutting into BOS-led sequences.

from saekit.data import iter_texts, token_batches
for tokens in token_batches(iter_texts("embedded"), tokenizer, 128, 16, bos_id=bos): ...
"""

from saekit.data.chunking import chunk_tokens, token_batches
from saekit.data.corpus import corpus_fingerprint, iter_texts
from saekit.data.embedded_corpus import embedded_documents
from saekit.data.paths import saekit_cache_dir

__all__ = [
    "chunk_tokens",
    "corpus_fingerprint",
    "embedded_documents",
    "iter_texts",
    "saekit_cache_dir",
    "token_batches",
]
