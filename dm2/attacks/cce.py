"""CCE (Pham et al.): textual inversion of new tokens on the attacked model, then prompts
that use them."""

from __future__ import annotations

import copy

import torch
from diffusers import StableDiffusionPipeline
from tqdm import tqdm
from transformers import CLIPTextModel, CLIPTokenizer

from dm2.attacks.common import AttackInputs, AttackResult, BudgetJudge, denoising_loss, restart_seed, states
from dm2.attacks.params import AttacksParams, CCEParams
from dm2.core.config import require
from dm2.core.steps import check_finite
from dm2.erasure.lora import frozen
from dm2.models.diffusion import encode_token_embeddings


def cce_tokens(p: CCEParams) -> list[str]:
    """The new tokens' strings: `p.token`, or `p.token` numbered when there are several."""
    return [p.token] if p.tokens == 1 else [f"{p.token}{j}" for j in range(p.tokens)]


def cce_phrase(p: CCEParams) -> str:
    """What "{token}" in the templates becomes: the new tokens, space-separated."""
    return " ".join(cce_tokens(p))


def invert_concept(
    pipe: StableDiffusionPipeline, latents: torch.Tensor, p: CCEParams, seed: int, restart: int = 0
) -> tuple[CLIPTokenizer, CLIPTextModel, list[torch.Tensor], list[float]]:
    """Textual inversion of the new tokens `cce_tokens(p)` on the attacked model from
    concept latents (N x 4 x h x w). Token j of restart k starts from
    `p.init_words[(k + j) % n]`. Works on copies of the tokenizer and text encoder, so the
    pipeline's own never see the tokens. Returns (tokenizer, text encoder after the largest
    budget, the new tokens' embeddings (tokens x width) after each budget, loss per step)."""
    require(len(latents) > 0, "attacks.cce.images", "no concept images to invert")
    tokenizer = copy.deepcopy(pipe.tokenizer)
    text_encoder = copy.deepcopy(pipe.text_encoder)
    names = cce_tokens(p)
    require(tokenizer.add_tokens(names) == len(names), "attacks.cce.token", f"{p.token!r} is already in the vocabulary")
    starts = []
    for word in p.init_words:
        init = tokenizer(word, add_special_tokens=False).input_ids
        require(len(init) == 1, "attacks.cce.init_words", f"{word!r} is {len(init)} tokens, need exactly one")
        starts.append(init[0])
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    new_ids = tokenizer.convert_tokens_to_ids(names)
    table = text_encoder.get_input_embeddings().weight
    # Only the new rows are optimised: Adam on the whole table (every other row with a zero
    # gradient, so unchanged) gives the same tokens at about a third more time per step.
    rows = torch.stack([table[starts[(restart + j) % len(starts)]] for j in range(len(new_ids))]).detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([rows], lr=p.lr)
    template_ids = tokenizer(
        [t.format(token=cce_phrase(p)) for t in p.train_templates], padding="max_length", max_length=tokenizer.model_max_length,
        truncation=True, return_tensors="pt",
    ).input_ids.to(table.device)  # fmt: skip
    slot = torch.full((table.shape[0],), -1, dtype=torch.long, device=table.device)
    slot[new_ids] = torch.arange(len(new_ids), device=table.device)
    g = torch.Generator().manual_seed(restart_seed(seed, restart))
    losses, snapshots = [], []
    with frozen(pipe.unet), frozen(text_encoder):
        for step in tqdm(range(p.budgets[-1]), desc="cce inversion", leave=False, mininterval=2):
            pick = torch.randint(len(latents), (p.batch_size,), generator=g)
            which = torch.randint(len(template_ids), (p.batch_size,), generator=g)
            ids = template_ids[which.to(table.device)]
            at = slot[ids].unsqueeze(-1)  # the new token's row at each position, -1 elsewhere
            embeds = torch.where(at >= 0, rows[at.clamp(min=0).squeeze(-1)], table[ids].detach())
            cond = encode_token_embeddings(text_encoder, embeds)
            loss = denoising_loss(pipe.unet, pipe.scheduler, latents[pick.to(latents.device)], cond, g).mean()
            check_finite(loss, "cce inversion", step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if step + 1 in p.budgets:
                snapshots.append(rows.detach().clone())
    with torch.no_grad():
        table[new_ids] = rows
    return tokenizer, text_encoder, snapshots, losses


def cce_attack(
    pipe: StableDiffusionPipeline, concept_latents: torch.Tensor, n_prompts: int, p: CCEParams, seed: int, restart: int = 0
) -> list[AttackResult]:
    """Invert the concept into new tokens on the attacked model, then `n_prompts`
    prompts from `p.prompt_templates` (cycled) that use them; one result per budget."""
    tokenizer, text_encoder, snapshots, losses = invert_concept(pipe, concept_latents, p, seed, restart)
    templates = [p.prompt_templates[i % len(p.prompt_templates)] for i in range(n_prompts)]
    prompts = [t.format(token=cce_phrase(p)) for t in templates]
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    new_ids = tokenizer.convert_tokens_to_ids(cce_tokens(p))
    weight = text_encoder.get_input_embeddings().weight
    results = []
    for embedding in snapshots:
        with torch.no_grad():
            weight[new_ids] = embedding
        results.append(
            AttackResult(
                prompts=prompts,
                cond=states(text_encoder, ids),
                columns={"template": templates},
                tensors={"embedding": embedding.cpu()},
                log={"loss": losses},
            )
        )
    return results


def run(pipe: StableDiffusionPipeline, inputs: AttackInputs, p: AttacksParams, restart: int, judge: BudgetJudge) -> list[AttackResult]:
    """The sweep's entry point: inverts the base model's best concept images; every
    prompt uses the same tokens, so none leaves early and the sweep judges the results."""
    return cce_attack(pipe, inputs.concept_latents, p.n_prompts, p.cce, p.seed, restart)
