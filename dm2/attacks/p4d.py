"""P4D (Chin et al.): discrete prompt tokens whose noise prediction on the attacked model
matches the original model's for the normal prompt (PEZ-style search, `dm2.attacks.pez`)."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

from dm2.attacks.common import AttackInputs, AttackResult, BudgetJudge, full_sequences, noised_rows, original_model, restart_seed, states, word_ids
from dm2.attacks.params import AttacksParams, P4DParams
from dm2.attacks.pez import TokenSearch, discrete_attack, vocabulary
from dm2.core.config import require

RESTART_SWAP = 0.5  # restarts > 0 start from the prompt with this share of its free tokens randomised


def p4d_loss(
    unet: UNet2DConditionModel,
    scheduler: DDIMScheduler,
    x0: torch.Tensor,
    target: torch.Tensor,
    states: torch.Tensor,
    g: torch.Generator,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per sequence: || eps_attacked(x_t | states) - eps_original(x_t | target) ||^2 on x_t
    noised from the original model's image x0 of the concept prompt; `states` are those of
    `rows` of `x0` and `target` (None: all)."""
    x_t, _, t = noised_rows(scheduler, x0, g, rows)
    if rows is not None:
        target = target[rows]
    with torch.no_grad(), original_model(unet):
        want = unet(x_t, t, encoder_hidden_states=target).sample
    got = unet(x_t, t, encoder_hidden_states=states).sample
    return (got - want).pow(2).mean(dim=(1, 2, 3))


def p4d_attack(
    pipe: StableDiffusionPipeline,
    prompts: list[str],
    x0: torch.Tensor,
    p: P4DParams,
    seed: int,
    batch_size: int,
    allowed: torch.Tensor | None = None,
    restart: int = 0,
    judge: BudgetJudge | None = None,
) -> list[AttackResult]:
    """Each normal prompt's first `p.tokens` tokens become free, initialised as they are
    (restarts > 0: with a share `RESTART_SWAP` of them randomised), and are optimised so the
    attacked model predicts the noise the original model predicts for the normal prompt, on
    x_t noised from `x0` (the original model's image for that prompt, N x 4 x h x w).
    `allowed`: the ids tokens may take (default the whole vocabulary). One result per
    budget of `p.budgets`; `judge`: see `discrete_attack`."""
    require(len(prompts) > 0, "attacks.n_prompts", "no prompts to attack")
    words = word_ids(pipe.tokenizer, prompts)
    require(all(words), "attacks.n_prompts", "a prompt without any token cannot be attacked")
    allowed = vocabulary(pipe, allowed)
    ids = full_sequences(pipe.tokenizer, words)
    free = torch.zeros_like(ids, dtype=torch.bool)
    for i, w in enumerate(words):
        free[i, 1 : 1 + min(len(w), p.tokens, ids.shape[1] - 2)] = True
    target = states(pipe.text_encoder, ids)
    seed = restart_seed(seed, restart)
    start = ids.clone()
    if restart > 0:
        g = torch.Generator().manual_seed(seed)
        allowed_ids = allowed.nonzero().squeeze(1)
        swap = free & (torch.rand(ids.shape, generator=g) < RESTART_SWAP)
        start[swap] = allowed_ids[torch.randint(len(allowed_ids), (int(swap.sum()),), generator=g)]

    def loss(part: slice, rows: torch.Tensor, cond: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return p4d_loss(pipe.unet, pipe.scheduler, x0[part], target[part], cond, g, rows)

    search = TokenSearch(start, free, allowed, p.budgets, p.lr, p.weight_decay)
    return discrete_attack(pipe, prompts, search, loss, seed, batch_size, "p4d", judge)


def run(pipe: StableDiffusionPipeline, inputs: AttackInputs, p: AttacksParams, restart: int, judge: BudgetJudge) -> list[AttackResult]:
    """The sweep's entry point: the shared prompts, from their base images; prompts
    `judge` calls attacked leave the search."""
    return p4d_attack(pipe, inputs.prompts, inputs.x0, p.p4d, p.seed, p.batch_size, inputs.allowed, restart, judge)
