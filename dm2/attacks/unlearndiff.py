"""UnlearnDiff (Zhang et al.): discrete prefix tokens with which the attacked model
denoises the original model's image of the normal prompt (PEZ-style search)."""

from __future__ import annotations

import torch
from diffusers import StableDiffusionPipeline

from dm2.attacks.common import AttackInputs, AttackResult, BudgetJudge, denoising_loss, full_sequences, restart_seed, word_ids
from dm2.attacks.params import AttacksParams, UnlearnDiffParams
from dm2.attacks.pez import TokenSearch, discrete_attack, vocabulary
from dm2.core.config import require


def unlearndiff_attack(
    pipe: StableDiffusionPipeline,
    prompts: list[str],
    x0: torch.Tensor,
    p: UnlearnDiffParams,
    seed: int,
    batch_size: int,
    allowed: torch.Tensor | None = None,
    restart: int = 0,
    judge: BudgetJudge | None = None,
) -> list[AttackResult]:
    """`p.prefix_tokens` free tokens before each normal prompt (restart 0: `p.prefix_init`
    repeated, or random allowed ids; other restarts: random), optimised so the attacked
    model denoises `x0`, the original model's image for that prompt and seed. One result
    per budget of `p.budgets`; `judge`: see `discrete_attack`."""
    require(len(prompts) > 0, "attacks.n_prompts", "no prompts to attack")
    allowed = vocabulary(pipe, allowed)
    seed = restart_seed(seed, restart)
    if p.prefix_init and restart == 0:
        init = pipe.tokenizer(p.prefix_init, add_special_tokens=False).input_ids
        require(len(init) == 1, "attacks.unlearndiff.prefix_init", f"{p.prefix_init!r} is {len(init)} tokens, need exactly one")
        prefixes = torch.full((len(prompts), p.prefix_tokens), init[0])
    else:
        allowed_ids = allowed.nonzero().squeeze(1)
        g = torch.Generator().manual_seed(seed)
        prefixes = allowed_ids[torch.randint(len(allowed_ids), (len(prompts), p.prefix_tokens), generator=g)]
    ids = full_sequences(pipe.tokenizer, [pre.tolist() + w for pre, w in zip(prefixes, word_ids(pipe.tokenizer, prompts))])
    free = torch.zeros_like(ids, dtype=torch.bool)
    free[:, 1 : 1 + min(p.prefix_tokens, ids.shape[1] - 2)] = True

    def loss(part: slice, rows: torch.Tensor, cond: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return denoising_loss(pipe.unet, pipe.scheduler, x0[part], cond, g, rows)

    search = TokenSearch(ids, free, allowed, p.budgets, p.lr, p.weight_decay)
    return discrete_attack(pipe, prompts, search, loss, seed, batch_size, "unlearndiff", judge)


def run(pipe: StableDiffusionPipeline, inputs: AttackInputs, p: AttacksParams, restart: int, judge: BudgetJudge) -> list[AttackResult]:
    """The sweep's entry point: the shared prompts, from their base images; prompts
    `judge` calls attacked leave the search."""
    return unlearndiff_attack(pipe, inputs.prompts, inputs.x0, p.unlearndiff, p.seed, p.batch_size, inputs.allowed, restart, judge)
