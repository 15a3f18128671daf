"""Latent ablation (saekit.analysis.ablation): removing latents changes the loss only where they fired and
after (attention is causal), and removing a latent that never fired changes nothing."""

import pytest
import torch

from saekit.analysis import dense_code_of
from saekit.analysis.ablation import ablate
from saekit.analysis.format import prompt_tokens
from saekit.config import SaeConfig
from saekit.errors import ConfigError

HOOK = "blocks.0.hook_resid_post"
TEXT = "The function returns the value of the first argument when it is set."


@pytest.fixture(scope="module")
def setup():
    from saekit.data import chunk_tokens, iter_texts
    from saekit.models import bos_token_id, capture, load_model, tokenizer_of
    from saekit.sae import Sae, estimate_act_scale, init_sae_from_data_

    model = load_model("tiny")
    torch.manual_seed(0)
    seqs = chunk_tokens(
        iter_texts("embedded"), tokenizer_of(model), 32, bos_id=bos_token_id(model), max_sequences=8
    )
    x = capture(model, torch.stack(list(seqs)), [HOOK]).acts[HOOK][:, 1:].reshape(-1, 64)
    sae = Sae(
        64,
        SaeConfig.make("topk", k=4, d_sae=96),
        act_scale=estimate_act_scale(x, "mean_norm_sqrt_d"),
        hookpoint=HOOK,
        model_id="tiny",
    )
    init_sae_from_data_(sae, sae.scale_input(x))
    sae.eval()
    acts = capture(model, prompt_tokens(model, TEXT), [HOOK]).acts[HOOK][0]
    return model, sae, dense_code_of(sae, acts)


def test_ablation_acts_from_the_first_firing_on(setup):
    model, sae, dense = setup
    seq = dense.shape[0]
    # each latent's first firing after BOS (seq if never); pick one that first fires mid-text
    fires = dense[1:] > 0
    first_pos = torch.where(fires.any(0), fires.float().argmax(0) + 1, torch.tensor(seq))
    latent = int(torch.argmin((first_pos - seq // 2).abs()))
    first = int(first_pos[latent])
    assert 1 < first < seq - 1
    result = ablate(model, sae, TEXT, [latent])
    delta = torch.tensor(result.delta)
    # loss t is the prediction made at position t: positions before the first firing see no change
    assert delta[:first].abs().max() == 0
    assert delta[first:].abs().max() > 1e-6
    assert len(result.tokens) == len(result.clean_loss) == dense.shape[0] - 1


def test_ablating_a_silent_latent_changes_nothing(setup):
    model, sae, dense = setup
    silent = int(torch.nonzero(dense.sum(0) == 0).flatten()[0])
    result = ablate(model, sae, TEXT, [silent])
    assert result.mean_delta == 0.0 and max(abs(d) for d in result.delta) == 0.0


def test_out_of_range_latent_is_a_one_line_error(setup):
    model, sae, _ = setup
    with pytest.raises(ConfigError, match="out of range"):
        ablate(model, sae, TEXT, [sae.d_sae])
