"""The weight-editing baselines (ESD-x / ESD-u, UCE, learnable prompts) on tiny random
models: their losses fall, the LoRA sits on the right modules and round-trips through
diffusers, UCE's closed form matches a hand-computed case."""

from __future__ import annotations

import pytest
import torch

from dm2.core.config import ParamsError, parse_section
from dm2.erasure.esd import esd, esd_loss, training_latent
from dm2.erasure.learnable_prompts import PromptSlot, learnable_prompts, original_eps, prompt_attached, removal_losses
from dm2.erasure.lora import (
    CROSS_ATTENTION,
    CROSS_ATTENTION_KV,
    NON_CROSS_ATTENTION,
    adapters_disabled,
    add_lora,
    load_lora_into,
    lora_state,
    save_lora,
)
from dm2.erasure.params import ESDParams, LearnablePromptParams, UCEParams
from dm2.erasure.uce import uce, uce_delta
from dm2.models.diffusion import encode_prompts
from tests.conftest import TINY_WIDTH, tiny_unet

CONCEPT = "a circle photo"
FAST = dict(ddim_steps=4, sample_guidance=2.0, lora_rank=4, seed=0)


def held_out(pipe, n: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(x_t, t) pairs the training loop never sees (its own generator)."""
    states, g = encode_prompts(pipe, [CONCEPT, ""]), torch.Generator().manual_seed(999)
    return [training_latent(pipe, states, FAST["ddim_steps"], FAST["sample_guidance"], g) for _ in range(n)]


def trainable(unet) -> list[str]:
    return [n for n, q in unet.named_parameters() if q.requires_grad]


@pytest.mark.parametrize(
    "targets, must, must_not",
    [(CROSS_ATTENTION, (".attn2.to_q", ".attn2.to_out.0"), (".attn1.",)),
     (CROSS_ATTENTION_KV, (".attn2.to_k", ".attn2.to_v"), (".attn1.", ".attn2.to_q")),
     (NON_CROSS_ATTENTION, (".attn1.to_q", ".ff.net.2", ".proj_in", ".conv1"), (".attn2.", "time_emb", "conv_in"))],
)
def test_lora_target_sets_hit_the_right_modules(targets, must, must_not):
    unet = tiny_unet()
    add_lora(unet, 2, targets)
    names = trainable(unet)
    assert all(any(m in n for n in names) for m in must)
    assert not any(m in n for n in names for m in must_not)


@pytest.mark.parametrize("targets", [("to_v",), CROSS_ATTENTION, CROSS_ATTENTION_KV, NON_CROSS_ATTENTION])
def test_lora_target_sets_round_trip_through_diffusers(tiny_pipe, tmp_path, targets):
    unet = tiny_pipe.unet
    torch.manual_seed(1)
    with torch.no_grad():
        for q in add_lora(unet, 3, targets):
            q.add_(0.2 * torch.randn_like(q))
    assert_round_trip(tiny_pipe, tmp_path)


def assert_round_trip(pipe, tmp_path) -> None:
    """The saved LoRA, loaded by diffusers into the bare UNet, gives the adapted output;
    with adapters disabled the UNet gives the base output."""
    unet, (x, t) = pipe.unet, (torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3)), torch.tensor([400]))
    c = encode_prompts(pipe, [CONCEPT])
    # one key format throughout: diffusers' loader guesses it from the first key
    assert all(".lora.down." in k or ".lora.up." in k for k in lora_state(unet))
    save_lora(unet, tmp_path)
    with torch.no_grad():
        adapted = unet(x, t, encoder_hidden_states=c).sample
        with adapters_disabled(unet):
            disabled = unet(x, t, encoder_hidden_states=c).sample
        unet.delete_adapters(unet.active_adapters())
        base = unet(x, t, encoder_hidden_states=c).sample
        load_lora_into(pipe, tmp_path)
        reloaded = unet(x, t, encoder_hidden_states=c).sample
    assert torch.equal(disabled, base) and not torch.allclose(adapted, base, atol=1e-5)
    assert torch.allclose(reloaded, adapted, atol=1e-5)


@pytest.mark.parametrize("variant", ["x", "u"])
def test_esd_lowers_its_loss_and_round_trips(tiny_pipe, tmp_path, variant):
    p = ESDParams(variant=variant, iterations=15, lr=3e-3, eta=1.0, **FAST)
    pairs, states = held_out(tiny_pipe), encode_prompts(tiny_pipe, [CONCEPT, ""])
    with torch.no_grad():
        before = sum(esd_loss(tiny_pipe.unet, x, t, states, p.eta).item() for x, t in pairs)
    log = esd(tiny_pipe, CONCEPT, p)
    names = trainable(tiny_pipe.unet)
    assert names and all((".attn2." in n) == (variant == "x") for n in names)
    with torch.no_grad():
        after = sum(esd_loss(tiny_pipe.unet, x, t, states, p.eta).item() for x, t in pairs)
    assert len(log["loss"]) == 15 and after < 0.8 * before
    assert_round_trip(tiny_pipe, tmp_path)


def test_esd_is_deterministic_and_names_a_nan(tiny_pipe):
    unet0 = tiny_pipe.unet
    p = ESDParams(iterations=3, lr=1e-3, **FAST)
    first = esd(tiny_pipe, CONCEPT, p)
    tiny_pipe.unet = tiny_unet()
    assert esd(tiny_pipe, CONCEPT, p) == first
    tiny_pipe.unet = unet0
    unet0.delete_adapters(unet0.active_adapters())
    with pytest.raises(ParamsError, match="baselines.esd.eta: must be non-negative, got nan"):
        ESDParams(iterations=2, eta=float("nan"), **FAST)  # refused as built, before any training
    # A target too large for float32 overflows the loss: the guard names the run and the step.
    with pytest.raises(FloatingPointError, match="esd-x: loss is inf at step 0"):
        esd(tiny_pipe, CONCEPT, ESDParams(iterations=2, eta=1e30, **FAST))


def test_uce_closed_form_matches_a_hand_computed_case():
    # W = [2 1], edit c = (1, 1) -> c* = (1, 0), keep c_j = (0, 1), lambda = 1:
    # numerator W c* c^T + W c_j c_j^T + W = [2 2] + [0 1] + [2 1] = [4 4]
    # M = c c^T + c_j c_j^T + I = [[2 1] [1 3]], M^-1 = [[3 -1] [-1 2]] / 5  ->  W' = [8/5 4/5]
    w = torch.tensor([[2.0, 1.0]])
    delta = uce_delta(w, torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), lam=1.0)
    assert torch.allclose(w.double() + delta, torch.tensor([[1.6, 0.8]], dtype=torch.float64), atol=1e-12)
    # no preserve rows, identity W: e1 goes halfway to e2 (lambda = 1), e2 stays
    delta = uce_delta(torch.eye(2), torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.zeros(0, 2), lam=1.0)
    assert torch.allclose(torch.eye(2, dtype=torch.float64) + delta, torch.tensor([[0.5, 0.0], [0.5, 1.0]], dtype=torch.float64))


def test_uce_lora_reproduces_the_closed_form_and_round_trips(tiny_pipe, tmp_path):
    p = UCEParams(anchor="", preserve=["a square photo", "a star"], lam=0.1)
    weights = {n: m.weight.clone() for n, m in tiny_pipe.unet.named_modules() if n.endswith(CROSS_ATTENTION_KV)}
    log = uce(tiny_pipe, CONCEPT, p)
    assert log["rank"] <= TINY_WIDTH and log["lora_error"] < 1e-5
    assert all(".attn2.to_k" in n or ".attn2.to_v" in n for n in trainable(tiny_pipe.unet))
    # W' by the textbook formula, straight from the token states (an independent route)
    s = encode_prompts(tiny_pipe, [CONCEPT, "", *p.preserve]).double()
    n_c = 3  # "a circle photo": 3 words; "" has none, so the shift onto the anchor is -3
    src = torch.arange(1, 77)
    c, c_star = s[0, src], s[1, (src - n_c).clamp(1, 76)]
    keep = s[2:, 1:].reshape(-1, TINY_WIDTH)
    m = c.T @ c + keep.T @ keep + p.lam * torch.eye(TINY_WIDTH, dtype=torch.float64)
    for name, w in weights.items():
        w = w.double()
        expected = (w @ c_star.T @ c + w @ keep.T @ keep + p.lam * w) @ torch.linalg.inv(m)
        with torch.no_grad():
            effective = tiny_pipe.unet.get_submodule(name)(torch.eye(TINY_WIDTH)).T  # no bias: W + B A
        assert torch.allclose(effective.double(), expected, atol=1e-4), name
    assert_round_trip(tiny_pipe, tmp_path)


@pytest.mark.parametrize("mode", ["concat", "additive"])
def test_learnable_prompts_lower_the_removal_loss_and_round_trip(tiny_pipe, tmp_path, mode):
    p = LearnablePromptParams(mode=mode, tokens=3, lam=0.1, iterations=15, lr=3e-3, prompt_lr=1e-2, **FAST)
    unet, pairs = tiny_pipe.unet, held_out(tiny_pipe)
    states, slot = encode_prompts(tiny_pipe, [CONCEPT, p.anchor]), PromptSlot()
    processors = unet.attn_processors

    def l_1() -> float:
        total = 0.0
        for x, t in pairs:
            eps_e, eps_n = original_eps(unet, slot, x, t, states).chunk(2)
            total += removal_losses(unet, slot, torch.zeros(1, 1, TINY_WIDTH), x, t, states[:1], eps_e, eps_n)[0].item()
        return total

    with torch.no_grad():
        before = l_1()
    log = learnable_prompts(tiny_pipe, CONCEPT, p)
    with torch.no_grad():
        after = l_1()
    assert len(log["l_e"]) == 15 and after < 0.8 * before
    assert all(".attn2." in n for n in trainable(unet))
    assert {n: type(q) for n, q in unet.attn_processors.items()} == {n: type(q) for n, q in processors.items()}
    assert_round_trip(tiny_pipe, tmp_path)


def test_prompt_attachment_changes_cross_attention_only_while_set(tiny_pipe):
    unet, slot = tiny_pipe.unet, PromptSlot()
    x, t, c = torch.randn(1, 4, 8, 8), torch.tensor([500]), encode_prompts(tiny_pipe, [CONCEPT])
    with torch.no_grad():
        plain = unet(x, t, encoder_hidden_states=c).sample
        with prompt_attached(unet, slot, "concat"):
            assert torch.equal(unet(x, t, encoder_hidden_states=c).sample, plain)  # empty slot: no-op
            slot.value = torch.randn(1, 2, TINY_WIDTH)
            assert not torch.allclose(unet(x, t, encoder_hidden_states=c).sample, plain)
        with prompt_attached(unet, slot, "additive"):
            slot.value = torch.zeros_like(c)
            assert torch.allclose(unet(x, t, encoder_hidden_states=c).sample, plain, atol=1e-6)
        assert torch.equal(unet(x, t, encoder_hidden_states=c).sample, plain)


@pytest.mark.parametrize(
    "cls, data, key",
    [(ESDParams, {"variant": "z"}, "esd.variant"),
     (ESDParams, {"iterations": 0}, "esd.iterations"),
     (UCEParams, {"lam": 0.0}, "esd.lam"),
     (UCEParams, {"lora_rank": 0}, "esd.lora_rank"),
     (LearnablePromptParams, {"mode": "stacked"}, "esd.mode"),
     (LearnablePromptParams, {"tokens": 0}, "esd.tokens")],
)
def test_bad_params_are_named(cls, data, key):
    with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
        parse_section(cls, data, "esd")
