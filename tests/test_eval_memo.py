"""ForwardMemo: evaluating a second SAE on the same text reuses the clean/ablation forwards and the held-out
rows, and gives exactly the numbers of an evaluation without the memo."""

import pytest
import torch

from saekit.eval.memo import ForwardMemo, fingerprint
from tests import test_splice
from tests.test_splice import BOS, D, FakeSae

toy = test_splice.toy  # the toy-LM fixture, shared with test_splice


def _losses(toy, sae, memo):
    from saekit.eval.splice import spliced_losses

    model, tokens, mean_act = toy
    return spliced_losses(model, sae, tokens, batch_size=2, mean_act=mean_act, progress=False, memo=memo)


def test_memo_runs_only_the_spliced_forward_for_a_second_sae_and_changes_no_number(toy):
    model = toy[0]
    first, second = FakeSae(gain=0.5), FakeSae(gain=0.8, bias=torch.full((D,), 0.1))
    plain = [_losses(toy, sae, None) for sae in (first, second)]
    memo = ForwardMemo(model)
    model.seen.clear()
    memoised = [_losses(toy, first, memo)]
    forwards_first = len(model.seen)
    memoised.append(_losses(toy, second, memo))
    batches = 3  # 5 sequences in batches of 2
    assert forwards_first == 4 * batches  # clean, zero, mean and the splice, per batch
    assert len(model.seen) - forwards_first == batches  # the second SAE: its splice only
    assert memo.hits == batches and memo.stored_bytes > 0
    assert memoised == plain  # bit-identical sums: the same per-batch values, added in the same order


def test_memo_keys_on_the_tokens_and_the_mean_and_respects_its_byte_budget(toy):
    model, tokens, mean_act = toy
    sae = FakeSae(gain=0.5)
    memo = ForwardMemo(model)
    _losses(toy, sae, memo)
    other_mean = (toy[0], tokens, mean_act + 1.0)  # a different mean ablation must not reuse the stored one
    assert _losses(other_mean, sae, memo) == _losses(other_mean, sae, None)
    assert memo.hits == 0
    full = ForwardMemo(model, max_bytes=0)
    assert _losses(toy, sae, full) == _losses(toy, sae, None)
    assert _losses(toy, sae, full) == _losses(toy, sae, None)
    assert full.stored_bytes == 0 and full.hits == 0


def test_fingerprint_tells_content_shape_and_dtype_apart():
    a = torch.arange(6)
    assert fingerprint(a) == fingerprint(a.clone())
    assert fingerprint(a) != fingerprint(a.reshape(2, 3))
    assert fingerprint(a) != fingerprint(a.to(torch.int32))
    b = a.clone()
    b[5] = 7
    assert fingerprint(a) != fingerprint(b)
    assert fingerprint(torch.empty(0)) != fingerprint(torch.empty(0, dtype=torch.int64))


def test_memo_serves_held_out_rows_once_per_token_set(monkeypatch):
    from saekit.eval import memo as memo_mod

    calls = []

    def fake_rows(model, tokens, hookpoint, *, batch_size):
        calls.append(hookpoint)
        yield tokens.float()

    monkeypatch.setattr(memo_mod, "activation_rows", fake_rows)
    memo = ForwardMemo(object())
    tokens = torch.tensor([[BOS, 3, 4], [BOS, 5, 6]])
    first = list(memo.activation_rows(tokens, "h", batch_size=2))
    again = list(memo.activation_rows(tokens, "h", batch_size=2))
    assert calls == ["h"] and torch.equal(first[0], again[0])
    list(memo.activation_rows(tokens + 1, "h", batch_size=2))
    list(memo.activation_rows(tokens, "other", batch_size=2))
    assert calls == ["h", "h", "other"]
    with pytest.raises(TypeError):
        ForwardMemo(object(), 5)  # the byte budget is keyword-only


def test_a_memo_refuses_another_models_tokens(toy):
    with pytest.raises(ValueError, match="another model"):
        _losses(toy, FakeSae(), ForwardMemo(object()))
