"""Text data: corpora (embedded with its held-out split, .txt, directories, .jsonl) and their cutting into
BOS-led sequences.

from saekit.data import iter_texts, token_batches
for tokens in token_batches(iter_texts("embedded"), tokenizer, 128, 16, bos_id=bos): ...
"""

from saekit.data.chunking import chunk_tokens, token_batches
from saekit.data.corpus import corpus_fingerprint, corpus_split_info, iter_texts
from saekit.data.embedded_corpus import embedded_corpus_info, embedded_documents
from saekit.data.paths import saekit_cache_dir

__all__ = [
    "chunk_tokens",
    "corpus_fingerprint",
    "corpus_split_info",
    "embedded_corpus_info",
    "embedded_documents",
    "iter_texts",
    "saekit_cache_dir",
    "token_batches",
]
