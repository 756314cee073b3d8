"""The mine / verify / circumvent steps on tiny random models."""

from __future__ import annotations

import pytest
import torch

from dm2.core.config import ParamsError, parse_section
from dm2.erasure.dark_miner_steps import circumvent, circumvent_losses, circumvent_states, delta_cosine, mine, mining_loss, pick_target
from dm2.erasure.lora import adapters_disabled, add_lora, frozen
from dm2.erasure.params import CircumventParams, MineParams, VerifyParams
from dm2.models.diffusion import encode_prompts, free_embedding_states, prompt_token_embeddings
from dm2.models.world_sd import world_scheduler
from tests.conftest import TINY_WIDTH, tiny_unet

SCHEDULE = dict(lr_drop_epoch=1000, lr_after_drop=0.001, grad_clip=10.0, optimizer="adam")


def mean_loss(fn, repeats: int = 8) -> float:
    return sum(fn(torch.Generator().manual_seed(100 + r)).item() for r in range(repeats)) / repeats


def test_mining_lowers_the_mining_loss(tiny_pipe):
    unet, sched = tiny_pipe.unet, tiny_pipe.scheduler
    g = torch.Generator().manual_seed(0)
    pool = torch.randn(3, 4, 8, 8, generator=g)
    init = torch.zeros(1, 4, TINY_WIDTH)
    p = MineParams(epochs=60, lr=0.05, tokens=4, k=3, **SCHEDULE)
    encode = lambda c: free_embedding_states(tiny_pipe, c)  # noqa: E731
    with torch.no_grad():
        before = mean_loss(lambda gg: mining_loss(unet, sched, pool, init, encode, gg))
    c, losses = mine(unet, sched, pool, init, encode, p, g)
    with torch.no_grad():
        after = mean_loss(lambda gg: mining_loss(unet, sched, pool, c, encode, gg))
    assert c.shape == init.shape and not torch.equal(c, init)
    assert after < before
    assert all(not q.requires_grad for q in unet.parameters())


def test_mining_keeps_tokens_within_the_norm_bound(tiny_pipe):
    unet, sched = tiny_pipe.unet, tiny_pipe.scheduler
    pool = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    init = torch.zeros(1, 4, TINY_WIDTH)
    p = MineParams(epochs=40, lr=0.2, tokens=4, k=3, **SCHEDULE)
    encode = lambda c: free_embedding_states(tiny_pipe, c)  # noqa: E731
    free, _ = mine(unet, sched, pool, init, encode, p, torch.Generator().manual_seed(1))
    bound = 0.5 * free.norm(dim=-1).max().item()
    bounded, _ = mine(unet, sched, pool, init, encode, p, torch.Generator().manual_seed(1), max_norm=bound)
    assert bounded.norm(dim=-1).max().item() <= bound * (1 + 1e-5)
    assert not torch.equal(bounded, init)


def test_delta_cosine_matches_hand_computed_value():
    f_r = torch.tensor([1.0, 1.0, 0.0])
    f_c = torch.tensor([2.0, 1.0, 0.0])  # delta (1, 0, 0)
    f_e = torch.tensor([[3.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 1.0, 0.0]])  # deltas (2,0,0), (0,1,0), (-1,0,0)
    # cosines 1, 0, -1 -> mean 0
    assert delta_cosine(f_c, f_r, f_e) == pytest.approx(0.0, abs=1e-6)
    assert delta_cosine(f_c, f_r, f_e[:2]) == pytest.approx(0.5, abs=1e-6)
    assert delta_cosine(f_c.unsqueeze(0), f_r.unsqueeze(0), f_e[:1]) == pytest.approx(1.0, abs=1e-6)
    # several reference images: Enc(x_r) is their mean, here (1, 1, 0) again
    refs = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    assert delta_cosine(f_c, refs, f_e[:2]) == pytest.approx(0.5, abs=1e-6)
    # several x_c: the cosine is averaged over them; deltas (1, 0, 0) and (0, 1, 0) against (2, 0, 0)
    assert delta_cosine(torch.tensor([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0]]), refs, f_e[:1]) == pytest.approx(0.5, abs=1e-6)


def test_disabled_adapters_reproduce_the_base_unet_exactly():
    base, adapted = tiny_unet(), tiny_unet()
    params = add_lora(adapted, rank=4)
    with torch.no_grad():
        for q in params:
            q.add_(0.1 * torch.randn_like(q))
    x, c, t = torch.randn(2, 4, 8, 8), torch.randn(2, 5, TINY_WIDTH), torch.tensor([10, 700])
    with torch.no_grad():
        expected = base(x, t, encoder_hidden_states=c).sample
        assert not torch.equal(adapted(x, t, encoder_hidden_states=c).sample, expected)
        with adapters_disabled(adapted):
            assert torch.equal(adapted(x, t, encoder_hidden_states=c).sample, expected)
        # and the adapters are back on afterwards
        assert not torch.equal(adapted(x, t, encoder_hidden_states=c).sample, expected)


def test_lora_covers_self_and_cross_attention_values_only():
    unet = tiny_unet()
    add_lora(unet, rank=8)
    names = [n for n, q in unet.named_parameters() if q.requires_grad]
    assert names and all(".to_v.lora_" in n for n in names)
    assert any(".attn1.to_v" in n for n in names) and any(".attn2.to_v" in n for n in names)


def test_circumventing_lowers_l_c_while_l_p_stays_small():
    unet = tiny_unet()
    sched = world_scheduler()
    torch.manual_seed(0)
    params = add_lora(unet, rank=4)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(1, 4, 8, 8, generator=g)
    c = 3 * torch.randn(1, 6, TINY_WIDTH, generator=g)
    c0 = torch.randn(1, 6, TINY_WIDTH, generator=g)
    states = circumvent_states(c, c0, lambda e: e)  # identity encoder: conditions are the embeddings
    assert torch.equal(states[2], -states[0]) and not states[1].any()

    def losses(i: int) -> float:
        with torch.no_grad():
            return mean_loss(lambda gg: circumvent_losses(unet, sched, x0, states, gg)[i])

    lc_before, lp_before = losses(0), losses(1)
    circumvent(unet, sched, params, [(x0, states)], CircumventParams(epochs=80, lr=0.01, **SCHEDULE), g)
    lc_after, lp_after = losses(0), losses(1)
    assert lp_before == 0.0  # the adapters start as the identity
    assert lc_after < 0.7 * lc_before
    assert lp_after < 0.25 * lc_before


def test_circumvent_losses_without_the_unused_frozen_pass_agree():
    """The GPU path skips the original model's prediction for c (never used); the losses
    and their gradients match the CPU path's, which computes it in the same batch."""
    unet = tiny_unet()
    torch.manual_seed(0)
    params = add_lora(unet, rank=4)
    with torch.no_grad():
        for q in params:
            q.normal_(0, 0.1)  # adapters away from the identity, so l_p and its gradient are not 0
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 4, 8, 8, generator=g)
    states = circumvent_states(torch.randn(1, 6, TINY_WIDTH, generator=g), torch.randn(1, 6, TINY_WIDTH, generator=g), lambda e: e)
    out = {}
    for frozen_on_c in (True, False):
        l_c, l_p = circumvent_losses(unet, world_scheduler(), x0, states, torch.Generator().manual_seed(5), frozen_on_c=frozen_on_c)
        grads = torch.autograd.grad(l_c + l_p, params)
        out[frozen_on_c] = (l_c.detach(), l_p.detach(), torch.cat([gr.flatten() for gr in grads]))
    (lc1, lp1, g1), (lc0, lp0, g0) = out[True], out[False]
    assert lp1 > 0
    torch.testing.assert_close(lc0, lc1, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(lp0, lp1, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(g0, g1, rtol=1e-4, atol=1e-7)


def test_pick_target_draws_this_loop_with_probability_r():
    g = torch.Generator().manual_seed(0)
    assert {pick_target(1, 0.0, g) for _ in range(20)} == {0}  # nothing earlier to replay
    picks = torch.tensor([pick_target(4, 0.7, g) for _ in range(4000)])
    assert abs((picks == 0).float().mean().item() - 0.7) < 0.03
    earlier = torch.bincount(picks[picks > 0], minlength=4)[1:].float()
    assert earlier.min() > 0.8 * earlier.mean()  # the earlier ones uniformly


def test_epoch_replay_circumvents_every_target():
    """With two targets and r = 0.5, both embeddings' l_c fall; with only the first, the
    second's stays where it was."""
    g = torch.Generator().manual_seed(3)
    x0s = [torch.randn(1, 4, 8, 8, generator=g) for _ in range(2)]
    c0 = torch.randn(1, 6, TINY_WIDTH, generator=g)
    states = [circumvent_states(3 * torch.randn(1, 6, TINY_WIDTH, generator=g), c0, lambda e: e) for _ in range(2)]
    p = CircumventParams(epochs=80, lr=0.01, r=0.5, **SCHEDULE)
    after = {}
    for n in (1, 2):
        unet = tiny_unet()
        torch.manual_seed(0)
        params = add_lora(unet, rank=4)

        def l_c(k: int) -> float:
            with torch.no_grad():
                return mean_loss(lambda gg: circumvent_losses(unet, world_scheduler(), x0s[k], states[k], gg)[0])

        before = l_c(1)
        circumvent(unet, world_scheduler(), params, list(zip(x0s, states))[:n], p, torch.Generator().manual_seed(1))
        after[n] = l_c(1) / before
    assert after[2] < 0.7 and after[2] < after[1] - 0.1


def test_preserved_prompts_keep_their_predictions():
    """With `keep`, the drift of the adapted model from the original on the kept prompt's
    images is a part of l_p and stays smaller than when it is left out."""
    g = torch.Generator().manual_seed(5)
    x0 = torch.randn(1, 4, 8, 8, generator=g)
    states = circumvent_states(3 * torch.randn(1, 6, TINY_WIDTH, generator=g), torch.randn(1, 6, TINY_WIDTH, generator=g), lambda e: e)
    keep = (torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 6, TINY_WIDTH, generator=g))
    drift = {}
    for kept in (None, keep):
        unet = tiny_unet()
        torch.manual_seed(0)
        params = add_lora(unet, rank=4)
        circumvent(unet, world_scheduler(), params, [(x0, states)], CircumventParams(epochs=80, lr=0.01, **SCHEDULE), torch.Generator().manual_seed(1), keep=kept)
        with torch.no_grad():
            with_keep = mean_loss(lambda gg: circumvent_losses(unet, world_scheduler(), x0, states, gg, keep)[1])
            without = mean_loss(lambda gg: circumvent_losses(unet, world_scheduler(), x0, states, gg)[1])
        drift[kept is None] = with_keep - without  # the kept prompts' share of l_p
    assert drift[True] > 0 and drift[False] > 0
    assert drift[False] < 0.6 * drift[True]  # about halved


def test_free_embeddings_of_a_prompt_give_its_states(tiny_pipe):
    """c initialised from the anchor's token embeddings conditions exactly like the anchor."""
    tokens = prompt_token_embeddings(tiny_pipe, "a photo")[:, 1:5]
    with torch.no_grad():
        assert torch.allclose(free_embedding_states(tiny_pipe, tokens), encode_prompts(tiny_pipe, ["a photo"]), atol=1e-5)
    with pytest.raises(ValueError, match="mine.tokens"):
        free_embedding_states(tiny_pipe, torch.zeros(1, 76, TINY_WIDTH))


def test_a_template_places_the_free_embeddings_among_its_words(tiny_pipe):
    """c from "circle" inside "a photo of a {c} here" conditions exactly like the prompt
    "a photo of a circle here"; "{c}" alone is the paper's BOS, c, EOS."""
    word = prompt_token_embeddings(tiny_pipe, "circle")[:, 1:2]
    with torch.no_grad():
        placed = free_embedding_states(tiny_pipe, word, "a photo of a {c} here")
        assert torch.allclose(placed, encode_prompts(tiny_pipe, ["a photo of a circle here"]), atol=1e-5)
        assert torch.equal(free_embedding_states(tiny_pipe, word, "{c}"), free_embedding_states(tiny_pipe, word))
        assert not torch.allclose(placed, free_embedding_states(tiny_pipe, word), atol=1e-3)
    with pytest.raises(ValueError, match="mine.template"):
        free_embedding_states(tiny_pipe, torch.zeros(1, 72, TINY_WIDTH), "a photo of a {c}")


def test_frozen_restores_gradient_flags():
    unet = tiny_unet()
    params = add_lora(unet, rank=2)
    with frozen(unet):
        assert not any(q.requires_grad for q in unet.parameters())
    assert all(q.requires_grad for q in params)


@pytest.mark.parametrize(
    "cls,section,data,culprit",
    [
        (VerifyParams, "verify", {"tau": 1.5, "steps": 5, "guidance": 3.0, "seed": 0}, "verify.tau"),
        (VerifyParams, "verify", {"tau": "high", "steps": 5, "guidance": 3.0, "seed": 0}, "verify.tau"),
        (MineParams, "mine", {"epochs": 0, "lr": 0.1, **SCHEDULE}, "mine.epochs"),
        (MineParams, "mine", {"epochs": 5, "lr": -0.1, **SCHEDULE}, "mine.lr"),
        (MineParams, "mine", {"epochs": 5, "lr": 0.1, "tokenz": 3, **SCHEDULE}, "tokenz"),
        (MineParams, "mine", {"epochs": 5, "lr": 0.1, "candidates": 0, **SCHEDULE}, "mine.candidates"),
        (MineParams, "mine", {"epochs": 5, "lr": 0.1, "keep_start": "yes", **SCHEDULE}, "mine.keep_start"),
        (CircumventParams, "circumvent", {"epochs": 5, "lr": 0.1, "r": 1.2, **SCHEDULE}, "circumvent.r"),
        (CircumventParams, "circumvent", {"epochs": 5, "lr": 0.1, **{**SCHEDULE, "optimizer": "lbfgs"}}, "circumvent.optimizer"),
        (CircumventParams, "circumvent", {"epochs": 5, "lr": 0.1, "replay": "step", **SCHEDULE}, "circumvent.replay"),
        (CircumventParams, "circumvent", {"epochs": 5, "lr": 0.1, "preserve": "a square", **SCHEDULE}, "circumvent.preserve"),
        (CircumventParams, "circumvent", {"epochs": 5, "lr": 0.1, "preserve": [""], **SCHEDULE}, "circumvent.preserve"),
        (CircumventParams, "circumvent", {"epochs": 5, "lr": 0.1, "preserve_images": 0, **SCHEDULE}, "circumvent.preserve_images"),
    ],
)
def test_bad_params_name_the_culprit(cls, section, data, culprit):
    with pytest.raises(ParamsError, match=culprit.replace(".", r"\.")):
        parse_section(cls, data, section)
