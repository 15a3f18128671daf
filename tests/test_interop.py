"""Interop (issue 10): foreign SAE files written here from the formats' own definitions, imported and checked
against a direct formula; saekit → format → saekit round trips for every method/format pair; the activation
scale folded exactly once; refusals that write nothing; `Sae.encode` taking raw activations.

The fixture writers below use only safetensors/torch/json and the tensor names, orientations and cfg keys
of docs/interop.md — never saekit's writers — so a reader that agrees with saekit's writer but not with the
format fails here.
"""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from saekit.config import SaeConfig
from saekit.formats import FormatError
from saekit.formats.hf_cache import resolve_pretrained
from saekit.interop import export_sae, import_sae
from saekit.rundir import RunDir
from saekit.sae import Sae
from saekit.types import Batch

D_IN, D_SAE, K = 12, 40, 4
KEYS = {"k": K}


def rand(*shape, scale=0.5):
    return torch.randn(*shape) * scale


def dense(code):
    return code.to_dense()


# ---------------------------------------------------------------------------------------- formulas


def topk_relu(h, k):
    top = h.topk(k, dim=1)
    return torch.zeros_like(h).scatter(1, top.indices, top.values.relu())


def assert_same_outputs(sae, x, z_want, x_hat_want, atol=1e-4):
    """`sae` (raw inputs) fires the same latents with the same values and reconstructs the same."""
    z = dense(sae.encode(x, training=False))
    assert torch.equal(z > 0, z_want > 0), "active latent sets differ"
    torch.testing.assert_close(z, z_want.float(), rtol=1e-4, atol=atol)
    torch.testing.assert_close(sae.reconstruct(x), x_hat_want.float(), rtol=1e-4, atol=atol)


# ---------------------------------------------------------------------------------------- fixture writers


def saelens_dir(path, arch, weights, cfg_extra=None, metadata=None):
    path.mkdir(parents=True)
    save_file({n: t.contiguous() for n, t in weights.items()}, str(path / "sae_weights.safetensors"))
    cfg = {
        "d_in": weights["W_enc"].shape[0],
        "d_sae": weights["W_enc"].shape[1],
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "architecture": arch,
        "metadata": {"model_name": "embedded", "hook_name": "blocks.3.hook_resid_post", **(metadata or {})},
        **(cfg_extra or {}),
    }
    (path / "cfg.json").write_text(json.dumps(cfg))
    return path


def base_weights(d_in=D_IN, d_sae=D_SAE):
    return {"W_enc": rand(d_in, d_sae), "b_enc": rand(d_sae, scale=0.1), "W_dec": rand(d_sae, d_in),
            "b_dec": rand(d_in, scale=0.2)}  # fmt: skip


def sparsify_hook(path, w_enc_T, b_enc, W_dec, b_dec, k, **cfg):
    path.mkdir(parents=True)
    save_file({"encoder.weight": w_enc_T, "encoder.bias": b_enc, "W_dec": W_dec, "b_dec": b_dec},
              str(path / "sae.safetensors"))  # fmt: skip
    keys = {"activation": "topk", "expansion_factor": 4, "normalize_decoder": True, "num_latents": 0, "k": k,
            "multi_topk": False, "skip_connection": False, "transcode": False}  # fmt: skip
    keys["d_in"] = w_enc_T.shape[1]
    keys.update(cfg)
    (path / "cfg.json").write_text(json.dumps(keys))
    return path


def sparsify_weights():
    return rand(D_SAE, D_IN), rand(D_SAE, scale=0.1), rand(D_SAE, D_IN), rand(D_IN, scale=0.2)


def dl_dir(path, state, trainer):
    path.mkdir(parents=True)
    torch.save(state, str(path / "ae.pt"))
    (path / "config.json").write_text(json.dumps({"trainer": trainer, "buffer": {"d_submodule": D_IN}}))
    return path


# ---------------------------------------------------------------------------------------- foreign → saekit


def test_saelens_inference_topk_with_decoder_norm_rescaling(tmp_path):
    w = base_weights()
    path = saelens_dir(tmp_path / "sl", "topk", w, {"k": K, "rescale_acts_by_decoder_norm": True})
    x = rand(64, D_IN, scale=2.0)
    norms = w["W_dec"].norm(dim=1)
    h = ((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]) * norms
    z = topk_relu(h, K)
    x_hat = (z / norms) @ w["W_dec"] + w["b_dec"]
    sae = Sae.load(path)
    assert (
        sae.cfg.method == "topk"
        and sae.hookpoint == "blocks.3.hook_resid_post"
        and sae.model_id == "embedded"
    )
    assert_same_outputs(sae, x, z, x_hat)  # values are SAELens's (rescaled) feature activations


def test_saelens_training_form_batchtopk_with_unfolded_scale(tmp_path):
    """save_model form: architecture batchtopk, a scalar double topk_threshold, rescaling on, the
    expected_average_only_in factor in activation_scaler.json, and pickles that must never be opened."""
    w = base_weights()
    w["topk_threshold"] = torch.tensor(0.4, dtype=torch.float64)
    cfg = {"k": K, "rescale_acts_by_decoder_norm": True, "normalize_activations": "expected_average_only_in"}
    path = saelens_dir(tmp_path / "ckpt", "batchtopk", w, cfg)
    (path / "activation_scaler.json").write_text(json.dumps({"scaling_factor": 0.3, "has_whitening": False}))
    save_file({"sparsity": torch.full((D_SAE,), -3.0)}, str(path / "sparsity.safetensors"))
    (path / "trainer_state.pt").write_bytes(b"not a pickle saekit may open")
    x = rand(64, D_IN, scale=8.0)
    norms = w["W_dec"].norm(dim=1)
    h = ((x * 0.3 - w["b_dec"]) @ w["W_enc"] + w["b_enc"]) * norms
    z = h.relu() * (h > 0.4)
    x_hat = ((z / norms) @ w["W_dec"] + w["b_dec"]) / 0.3
    sae = Sae.load(path)
    assert sae.act_scale == pytest.approx(0.3)  # kept once, not folded and not lost
    assert_same_outputs(sae, x, z, x_hat)
    assert 0 < (z > 0).sum(dim=1).float().mean() < D_SAE, "the threshold must matter here"


def test_saelens_log_threshold_jumprelu_and_no_b_dec_on_input(tmp_path):
    w = base_weights()
    theta = torch.rand(D_SAE) * 0.5 + 0.05
    w["log_threshold"] = theta.log()
    path = saelens_dir(tmp_path / "jr", "jumprelu", w, {"apply_b_dec_to_input": False})
    x = rand(64, D_IN, scale=2.0)
    h = x @ w["W_enc"] + w["b_enc"]
    z = h.relu() * (h > theta)
    sae = Sae.load(path)
    assert sae.cfg.method == "jumprelu"
    assert_same_outputs(sae, x, z, z @ w["W_dec"] + w["b_dec"])


def test_saelens_standard_is_relu(tmp_path):
    w = base_weights()
    path = saelens_dir(tmp_path / "std", "standard", w)
    x = rand(32, D_IN)
    z = ((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]).relu()
    assert_same_outputs(Sae.load(path), x, z, z @ w["W_dec"] + w["b_dec"])


def test_sparsify_run_with_two_hookpoints(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(
        json.dumps({"model": "embedded", "hookpoints": ["layers.3", "layers.6"]})
    )
    (run / "state.pt").write_bytes(b"pickled optimiser state: never read")
    hooks = {}
    for name, k in (("layers.3", 3), ("layers.6.mlp", 5)):
        w = sparsify_weights()
        hooks[name] = (w, k)
        sparsify_hook(run / name, *w, k)
    with pytest.raises(FormatError, match="several SAEs"):
        Sae.load(run)
    x = rand(48, D_IN, scale=2.0)
    for name, ((enc_w, enc_b, W_dec, b_dec), k) in hooks.items():
        sae = Sae.load(run, select=name)
        z = topk_relu(((x - b_dec) @ enc_w.T + enc_b).relu(), k)
        assert_same_outputs(sae, x, z, z @ W_dec + b_dec)  # W_dec as stored, no transpose
        assert sae.model_id == "embedded"
    assert Sae.load(run, select="layers.6.mlp").hookpoint == "blocks.6.hook_mlp_out"
    report = import_sae(run, tmp_path / "imp", "sparsify", select="layers.3")
    assert report.agreement.latent_agreement == 1.0
    assert Sae.load(tmp_path / "imp" / "final").hookpoint == "blocks.3.hook_resid_post"


def test_dictionary_learning_batchtopk(tmp_path):
    enc_w, enc_b, dec_w, b_dec = rand(D_SAE, D_IN), rand(D_SAE, scale=0.1), rand(D_IN, D_SAE), rand(D_IN)
    state = {"k": torch.tensor(K, dtype=torch.int32), "threshold": torch.tensor(0.35),
             "decoder.weight": dec_w, "encoder.weight": enc_w, "encoder.bias": enc_b,
             "b_dec": b_dec}  # fmt: skip
    trainer = {"dict_class": "BatchTopKSAE", "activation_dim": D_IN, "dict_size": D_SAE, "k": K, "layer": 5,
               "lm_name": "embedded", "submodule_name": "resid_post_layer_5"}  # fmt: skip
    path = dl_dir(tmp_path / "dl", state, trainer)
    x = rand(64, D_IN, scale=2.0)
    post = ((x - b_dec) @ enc_w.T + enc_b).relu()
    z = post * (post > 0.35)
    sae = Sae.load(path)
    assert sae.hookpoint == "blocks.5.hook_resid_post" and sae.cfg.method == "jumprelu"
    assert_same_outputs(sae, x, z, z @ dec_w.T + b_dec)  # decoder.weight is [d, n]: transposed


# ---------------------------------------------------------------------------------------- saekit → X → saekit


def trained_like(method, act_scale=0.25, **keys):
    """A small SAE of `method` with random weights, learned thresholds where it has them, act_scale ≠ 1."""
    torch.manual_seed(1)
    sae = Sae(D_IN, SaeConfig.make(method, d_sae=D_SAE, **keys), act_scale=act_scale,
              hookpoint="blocks.2.hook_resid_post", model_id="tiny")  # fmt: skip
    with torch.no_grad():
        sae.W_enc.copy_(rand(D_IN, D_SAE))
        sae.b_enc.copy_(rand(D_SAE, scale=0.1))
        sae.W_dec.copy_(rand(D_SAE, D_IN))
        sae.b_dec.copy_(rand(D_IN, scale=0.2))
        if sae.threshold is not None and sae.activation.threshold == "parameter":
            sae.threshold.copy_(torch.rand(D_SAE) * 0.5)
    if sae.activation.threshold == "buffer":
        sae.train()
        sae.encode(rand(64, D_IN, scale=8.0), training=True)  # learns the inference threshold(s)
    return sae.eval()


METHOD_KEYS = {
    "topk": {"k": K},
    "batchtopk": {"k": K},
    "mutual_choice": {"k": K},
    "feature_choice": {"k": K},
    "jumprelu": {"target_l0": 4.0},
    "matryoshka": {"k": K, "activation": "topk"},
    "aux_zipf": {"k": K, "activation": "batchtopk"},
    "multi_topk": {"k": K},
    "hierarchical_topk": {"k": K},
    "gsae": {"k": K, "grad_beta": 1.0},
}
TOPK_RULE = {"topk", "matryoshka", "multi_topk", "hierarchical_topk", "gsae"}
PAIRS = [(m, f) for m in METHOD_KEYS for f in ("saelens", "sparsify", "dictionary_learning")
         if f != "sparsify" or m in TOPK_RULE]  # fmt: skip


@pytest.mark.parametrize(("method", "fmt"), PAIRS)
def test_round_trip_keeps_latents_and_reconstructions(tmp_path, method, fmt):
    """Export, import back: same method, same latents and values, same raw reconstructions (1e-4)."""
    sae = trained_like(method, **METHOD_KEYS[method])
    x = rand(96, D_IN, scale=8.0)
    report = export_sae(sae, fmt, tmp_path / "out", sample=x)
    assert report.agreement.latent_agreement == 1.0
    back = Sae.load(tmp_path / "out")
    assert back.cfg.method == method and back.act_scale == 1.0 and back.model_id == "tiny"
    assert back.hookpoint == sae.hookpoint
    assert_same_outputs(back, x, dense(sae.encode(x, training=False)), sae.reconstruct(x))
    again = import_sae(tmp_path / "out", tmp_path / "run", fmt)
    assert again.method == method and again.agreement.rows_identical == 1.0


def test_scale_is_folded_exactly_once(tmp_path):
    """With c = 0.25 a missing fold (×4) or a double fold (÷4) moves every reconstruction; the file holds
    W_enc·c, W_dec/c, b_dec/c with normalize_activations none."""
    sae = trained_like("topk", k=K)
    x = rand(64, D_IN, scale=8.0)
    export_sae(sae, "saelens", tmp_path / "sl", sample=x)
    w = load_file(str(tmp_path / "sl" / "sae_weights.safetensors"))
    cfg = json.loads((tmp_path / "sl" / "cfg.json").read_text())
    assert cfg["normalize_activations"] == "none" and cfg["architecture"] == "topk" and cfg["k"] == K
    torch.testing.assert_close(w["W_enc"], sae.W_enc.detach() * 0.25)
    torch.testing.assert_close(w["W_dec"], sae.W_dec.detach() / 0.25)
    torch.testing.assert_close(w["b_dec"], sae.b_dec.detach() / 0.25)
    h = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    x_hat = topk_relu(h, K) @ w["W_dec"] + w["b_dec"]
    torch.testing.assert_close(x_hat, sae.reconstruct(x), rtol=1e-4, atol=1e-4)
    back = Sae.load(tmp_path / "sl")
    torch.testing.assert_close(back.reconstruct(x), sae.reconstruct(x), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(back.reconstruct(x) * 0.25, sae.reconstruct(x), atol=1e-2)  # c matters


def test_batch_methods_without_a_learned_threshold_export_their_topk_fallback(tmp_path):
    sae = Sae(D_IN, SaeConfig.make("batchtopk", k=K, d_sae=D_SAE)).eval()  # θ never learned: per-row TopK
    export_sae(sae, "saelens", tmp_path / "sl", sample=rand(32, D_IN))
    assert json.loads((tmp_path / "sl" / "cfg.json").read_text())["architecture"] == "topk"


@pytest.mark.parametrize(
    ("method", "keys", "fmt", "message"),
    [
        ("msae", {"k": K}, "saelens", "caps latent values"),
        ("mp", {"steps": K}, "dictionary_learning", "matching pursuit"),
        ("jumprelu", {"target_l0": 4.0}, "sparsify", "TopK only"),
    ],
)
def test_unrepresentable_methods_are_refused(tmp_path, method, keys, fmt, message):
    sae = trained_like(method, **keys)
    with pytest.raises(FormatError, match=message) as err:
        export_sae(sae, fmt, tmp_path / "out", sample=rand(8, D_IN))
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------- registry, API


def test_from_pretrained_resolves_the_hugging_face_cache_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--org--saes"
    saelens_dir(repo / "snapshots" / "abc123" / "layer_3", "topk", base_weights(), {"k": K})
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    assert Sae.from_pretrained("org/saes", "layer_3").cfg.params.k == K
    registry = tmp_path / "pretrained_saes.yaml"
    registry.write_text("my-release:\n  repo_id: org/saes\n  saes:\n    - id: l3\n      path: layer_3\n")
    assert Sae.from_pretrained("my-release", "l3", registry=registry).d_sae == D_SAE
    with pytest.raises(FormatError, match=r"models--org--saes/snapshots/<revision>/layer_9"):
        resolve_pretrained("org/saes", "layer_9")


def test_encode_takes_raw_activations_like_reconstruct():
    sae = trained_like("topk", act_scale=0.05, k=K)
    x_raw = rand(32, D_IN, scale=40.0)
    raw = sae.encode(x_raw, training=False)
    scaled = sae.encode_normalized(sae.scale_input(x_raw), training=False)
    assert torch.equal(raw.indices, scaled.indices) and torch.equal(raw.values, scaled.values)
    torch.testing.assert_close(sae.decode(raw) / 0.05, sae.reconstruct(x_raw))
    old_habit = sae.encode_normalized(x_raw, training=False)  # forgetting the scale picks other latents
    assert not torch.equal(dense(old_habit) > 0, dense(raw) > 0)


def test_gsae_encode_scales_raw_gradients():
    sae = trained_like("gsae", act_scale=0.3, k=K, grad_beta=5.0)
    x, g = rand(16, D_IN, scale=5.0), rand(16, D_IN)
    raw = sae.encode(x, Batch(x, grads=g), training=False)
    scaled = sae.encode_normalized(sae.scale_input(x), Batch(x, grads=g / 0.3), training=False)
    assert torch.equal(raw.indices, scaled.indices)


def test_a_run_whose_final_is_a_foreign_directory_loads(tmp_path):
    """RunDir.load_sae (eval, index, the app) converts a SAELens directory placed as final/ on the fly."""
    src = saelens_dir(tmp_path / "sl", "topk", base_weights(), KEYS)
    import_sae(src, tmp_path / "run")
    run = RunDir(tmp_path / "run")
    expected = run.load_sae()
    shutil.rmtree(run.final_dir)
    shutil.copytree(src, run.final_dir)
    x = rand(16, D_IN)
    torch.testing.assert_close(run.load_sae().reconstruct(x), expected.reconstruct(x))
