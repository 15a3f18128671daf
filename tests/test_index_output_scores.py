"""Output scores with the prompt prefix shared (one packed pass per batch of latents) against the plain
definition (one full steered copy of the prompt per latent), which is kept as the reference path."""

import pytest
import torch

from saekit.analysis import output_scores
from saekit.analysis.format import prompt_tokens
from saekit.config import SaeConfig
from saekit.models.shared_prefix import packed_layout, packed_matches_full

PROMPTS = ("From my experience,", "The function returns the value of")


@pytest.fixture(scope="module")
def model():
    from saekit.models import load_model

    return load_model("tiny")


def _sae(model, hookpoint: str):
    from saekit.data import chunk_tokens, iter_texts
    from saekit.models import bos_token_id, capture, tokenizer_of
    from saekit.sae import Sae, estimate_act_scale, init_sae_from_data_

    torch.manual_seed(0)
    seqs = chunk_tokens(
        iter_texts("embedded"), tokenizer_of(model), 32, bos_id=bos_token_id(model), max_sequences=8
    )
    x = capture(model, torch.stack(list(seqs)), [hookpoint]).acts[hookpoint][:, 1:].reshape(-1, 64)
    sae = Sae(
        64,
        SaeConfig.make("topk", k=4, d_sae=150),
        act_scale=estimate_act_scale(x, "mean_norm_sqrt_d"),
        hookpoint=hookpoint,
        model_id="tiny",
    )
    init_sae_from_data_(sae, sae.scale_input(x))
    return sae.eval()


@pytest.mark.parametrize(
    "hookpoint, batch_size", [("blocks.0.hook_resid_post", 64), ("blocks.1.hook_resid_mid", 1000)]
)
def test_shared_prefix_scores_equal_full_forward_scores(model, hookpoint, batch_size):
    """Every latent, two prompts of different lengths, a batch size leaving a short last batch (64) or
    larger than the tiny model's 128-token context holds (split to fit).

    Tolerance: the two paths sum the same numbers in another order (fp32), so probabilities agree to
    ~1e-7; a rank may move by a token whose probability ties the best one's to that precision, so the
    rank score may differ by 2/|V|."""
    sae = _sae(model, hookpoint)
    kw = dict(prompts=PROMPTS, batch_size=batch_size)
    shared = output_scores(model, sae, **kw)
    full = output_scores(model, sae, shared_prefix=False, **kw)
    vocab = model.cfg.d_vocab
    torch.testing.assert_close(shared["prob_score"], full["prob_score"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(shared["output_score"], full["output_score"], rtol=1e-4, atol=1e-6)
    assert (shared["rank_score"] - full["rank_score"]).abs().max() <= 2 / vocab
    # the steering did something: scores spread over latents (a no-op would give one value for all)
    assert full["prob_score"].std() > 1e-4


def test_packed_layout_attends_to_prefix_and_self_only():
    ids, positions, mask = packed_layout(torch.tensor([[5, 6, 7, 8]]), 3)
    assert ids.tolist() == [[5, 6, 7, 8, 8, 8]]
    assert positions.tolist() == [[0, 1, 2, 3, 3, 3]]
    allowed = (mask[0, 0] == 0).int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 0, 1, 0],
        [1, 1, 1, 0, 0, 1],
    ]


class _IgnoresMask(torch.nn.Module):
    """A model that drops the attention mask and position ids: packing must be detected as unusable."""

    def __init__(self, model):
        super().__init__()
        self.inner = model

    def forward(self, tokens, **_ignored):
        return self.inner(tokens)


def test_packing_is_checked_on_the_model(model):
    tokens = prompt_tokens(model, PROMPTS[1])
    assert packed_matches_full(model, tokens)
    assert not packed_matches_full(_IgnoresMask(model), tokens)
