"""An SAELens SAE (files written here from the format's definition) imported with `saekit import`, then
evaluated, indexed and opened in the app like any trained run.

The tiny model keeps the default run fast; the embedded model (SmolLM2) is the same path on a real model
and is marked slow (one held-out splice there costs minutes of CPU on a loaded 2-core machine).
"""

import json

import pytest
import torch
from app_testing import open_app
from safetensors.torch import save_file

from saekit.analysis import LatentIndex, build_index
from saekit.cli import main
from saekit.config import EvalConfig
from saekit.eval import evaluate_run
from saekit.sae import Sae

CASES = [
    pytest.param("tiny", "blocks.1.hook_resid_post", 64, id="tiny"),
    pytest.param("embedded", "blocks.9.hook_resid_post", 576, id="embedded", marks=pytest.mark.slow),
]


def saelens_topk(path, model, hook, d_in, d_sae, k=8):
    """A tied TopK SAE in SAELens's inference layout (unit decoder rows, W_enc = W_decᵀ)."""
    path.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    W_dec = torch.randn(d_sae, d_in, generator=gen)
    W_dec = W_dec / W_dec.norm(dim=1, keepdim=True)
    tensors = {
        "W_enc": W_dec.T.contiguous(),
        "b_enc": torch.zeros(d_sae),
        "W_dec": W_dec,
        "b_dec": torch.zeros(d_in),
    }
    save_file(tensors, str(path / "sae_weights.safetensors"))
    cfg = {"d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
           "normalize_activations": "none", "reshape_activations": "none", "k": k,
           "rescale_acts_by_decoder_norm": False, "architecture": "topk",
           "metadata": {"model_name": model, "hook_name": hook, "hook_head_index": None}}  # fmt: skip
    (path / "cfg.json").write_text(json.dumps(cfg))
    return path


@pytest.mark.parametrize(("model", "hook", "d_in"), CASES)
def test_imported_saelens_sae_is_evaluated_indexed_and_opened(tmp_path, model, hook, d_in):
    src = saelens_topk(tmp_path / "saelens", model, hook, d_in, 2 * d_in)
    runs = tmp_path / "runs"
    assert main(["import", str(src), "--from", "saelens", str(runs / "imported")]) == 0
    sae = Sae.load(runs / "imported" / "final")
    assert (sae.cfg.method, sae.hookpoint, sae.cfg.params.k) == ("topk", hook, 8)

    result = evaluate_run(runs / "imported", EvalConfig(num_sequences=2, batch_size=2, context_length=16))
    assert result["heldout"]["l0_mean"] == pytest.approx(8, abs=0.5)  # TopK(8), ReLU may drop a few
    assert 0 < result["heldout"]["fvu"] < 10

    build_index(
        runs / "imported", num_sequences=4, batch_size=2, context_length=16, compute_output_scores=False
    )
    index = LatentIndex.open(runs / "imported")
    assert index.d_sae == sae.d_sae

    at = open_app(runs)
    table = at.dataframe[0].value
    assert list(table["name"]) == ["imported"] and list(table["k"]) == [8]
    assert table["FVU"][0] == pytest.approx(result["heldout"]["fvu"])
    latents = open_app(runs, "latents")
    latent = index.top_by("frequency", n=1)[0]
    latents.number_input(key="latents_id").set_value(latent).run()
    assert latents.subheader[0].value == f"Latent {latent}"
