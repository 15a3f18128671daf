"""Interop refusals (issue 10): what no format or saekit can represent is refused with a one-line error and
nothing written — transcoders, skip connections, per-token normalisation, unknown architectures, mismatched
shapes, NaN weights, a pickle where weights belong — plus the model/hook point and output-directory rules.

The foreign files are written with the format writers of test_interop.py (from the formats' definitions).
"""

import pickle

import pytest
import torch
from test_interop import (
    D_IN,
    D_SAE,
    KEYS,
    K,
    base_weights,
    dl_dir,
    rand,
    saelens_dir,
    sparsify_hook,
    sparsify_weights,
)

from saekit.cli import main
from saekit.formats import FormatError
from saekit.interop import import_sae


def _pickle_payload(path):
    """A pickle holding an arbitrary object where tensors belong: weights_only loading must refuse it."""
    path.write_bytes(pickle.dumps({"encoder.weight": object()}))


REFUSALS = {
    "transcoder": ("saelens", lambda p: saelens_dir(p, "transcoder", base_weights()), "transcoder"),
    "transcoder_shapes": (
        "saelens",
        lambda p: saelens_dir(p, "standard", {**base_weights(), "W_dec": rand(D_SAE, 7), "b_dec": rand(7)}),
        "transcoder",
    ),
    "skip_connection": (
        "sparsify",
        lambda p: sparsify_hook(p, *sparsify_weights(), K, skip_connection=True),
        "skip",
    ),
    "layer_norm": (
        "saelens",
        lambda p: saelens_dir(p, "topk", base_weights(), {"k": K, "normalize_activations": "layer_norm"}),
        "layer_norm",
    ),
    "unknown_architecture": ("saelens", lambda p: saelens_dir(p, "gated", base_weights()), "gated"),
    "mismatched_shapes": (
        "saelens",
        lambda p: saelens_dir(p, "topk", {**base_weights(), "b_enc": rand(D_SAE + 1)}, {"k": K}),
        "shape",
    ),
    "nan_weights": (
        "saelens",
        lambda p: saelens_dir(p, "topk", {**base_weights(), "b_dec": torch.full((D_IN,), torch.nan)}, KEYS),
        "NaN",
    ),
    "pickle_as_safetensors": ("saelens", lambda p: _pickle_in_saelens(p), "safetensors"),
    "pickle_object_in_ae_pt": ("dictionary_learning", lambda p: _pickle_in_dl(p), "weights_only"),
}  # fmt: skip


def _pickle_in_saelens(path):
    saelens_dir(path, "topk", base_weights(), {"k": K})
    torch.save(base_weights(), str(path / "sae_weights.safetensors"))  # a pickle under the weights' name
    return path


def _pickle_in_dl(path):
    trainer = {"dict_class": "AutoEncoderTopK", "activation_dim": D_IN, "dict_size": D_SAE, "k": K}
    dl_dir(path, {"k": torch.tensor(K)}, trainer)
    _pickle_payload(path / "ae.pt")
    return path


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals_are_one_line_and_write_nothing(tmp_path, case, caplog):
    fmt, make, message = REFUSALS[case]
    src = make(tmp_path / "src")
    with pytest.raises(FormatError, match=message) as err:
        import_sae(src, tmp_path / "out", fmt, model="tiny", hookpoint="blocks.0.hook_resid_post")
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()
    if case == "transcoder":  # the CLI boundary: exit 2, one ERROR line
        assert main(["import", str(src), "--from", fmt, str(tmp_path / "cli")]) == 2
        assert not (tmp_path / "cli").exists()


def test_import_needs_model_and_hookpoint_from_somewhere(tmp_path):
    src = saelens_dir(
        tmp_path / "sl", "topk", base_weights(), {"k": K}, metadata={"model_name": "", "hook_name": ""}
    )
    with pytest.raises(FormatError, match="model=.*hookpoint="):
        import_sae(src, tmp_path / "out")
    report = import_sae(src, tmp_path / "out", model="tiny", hookpoint="blocks.1.hook_resid_post")
    assert "'tiny'" in report.notes[0] and (tmp_path / "out" / "config.yaml").is_file()


def test_output_directory_is_never_replaced(tmp_path):
    src = saelens_dir(tmp_path / "sl", "topk", base_weights(), {"k": K})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(FormatError, match="already exists"):
        import_sae(src, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
