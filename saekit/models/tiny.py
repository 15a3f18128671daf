"""The `"tiny"` model: a 2-layer randomly initialised transformer with a small committed BPE tokenizer.

Weights come from a fixed seed (same seed -> bit-identical logits), so tests can rely on them. The
tokenizer (4096-token byte-level BPE with <|bos|>/<|eos|>/<|pad|>, BOS prepended by its post-processor)
was trained once on the embedded demo corpus and committed under `saekit/assets/tiny_tokenizer/`;
`python -m saekit.models.tiny` retrains it (only needed if the assets are deleted).

    model = boot_tiny()                       # TransformerBridge, d_model 64, 2 layers
    tok = load_tiny_tokenizer()
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from transformer_lens.config import TransformerBridgeConfig
from transformer_lens.model_bridge import TransformerBridge

from saekit.errors import ModelLoadError

logger = logging.getLogger(__name__)

TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny_tokenizer"
VOCAB_SIZE = 4096
SPECIAL_TOKENS = ("<|bos|>", "<|eos|>", "<|pad|>")
TINY_SHAPE = dict(d_model=64, n_layers=2, n_heads=4, d_head=16, d_mlp=256, n_ctx=128)


def load_tiny_tokenizer() -> Any:
    """The committed tokenizer, loaded from disk (an in-memory one breaks `boot_native`)."""
    from transformers import AutoTokenizer

    if not (TOKENIZER_DIR / "tokenizer.json").is_file():
        raise ModelLoadError(
            f"the tiny tokenizer is missing from {TOKENIZER_DIR}; reinstall saekit or "
            "rebuild it with `python -m saekit.models.tiny`"
        )
    return AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))


def boot_tiny(device: str = "cpu", seed: int = 0) -> TransformerBridge:
    """Build the tiny model; `seed` fixes every weight."""
    tokenizer = load_tiny_tokenizer()
    cfg = TransformerBridgeConfig(
        **TINY_SHAPE,
        d_vocab=len(tokenizer),
        act_fn="gelu",
        normalization_type="LN",
        seed=seed,
        model_name="tiny",
    )
    return TransformerBridge.boot_native(cfg, tokenizer=tokenizer, device=device)


def train_tiny_tokenizer(texts: Iterable[str], out_dir: Path = TOKENIZER_DIR) -> None:
    """Train the byte-level BPE tokenizer on `texts` and save it (transformers format) to `out_dir`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # any byte stays encodable
        min_frequency=2,
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer)
    bos = SPECIAL_TOKENS[0]
    # Prepend BOS like Llama-family tokenizers do, so `model.to_tokens(text)` matches chunk_tokens.
    core.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, core.token_to_id(bos))]
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=SPECIAL_TOKENS[0],
        eos_token=SPECIAL_TOKENS[1],
        pad_token=SPECIAL_TOKENS[2],
        model_max_length=TINY_SHAPE["n_ctx"],
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(str(out_dir))
    # transformers 5 writes its new class name; the generic name also loads on transformers 4.x.
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    logger.info("saved tiny tokenizer (%d tokens) to %s", len(wrapped), out_dir)


if __name__ == "__main__":
    from saekit.data import iter_texts

    logging.basicConfig(level=logging.INFO)
    train_tiny_tokenizer(iter_texts("embedded"))
