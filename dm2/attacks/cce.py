"""CCE (Pham et al.): textual inversion of new tokens on the attacked model, then prompts
that use them."""

from __future__ import annotations

import copy

import torch
from diffusers import StableDiffusionPipeline
from tqdm import tqdm
from transformers import CLIPTextModel, CLIPTokenizer

from dm2.attacks.common import AttackInputs, AttackResult, denoising_loss, restart_seed, states
from dm2.attacks.params import AttacksParams, CCEParams
from dm2.config import require
from dm2.lora import frozen
from dm2.steps import check_finite


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
    weight = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        for j, new_id in enumerate(new_ids):
            weight[new_id] = weight[starts[(restart + j) % len(starts)]]
    only_new = torch.zeros(weight.shape[0], 1, device=weight.device)
    only_new[new_ids] = 1.0
    weight.requires_grad_(True)
    hook = weight.register_hook(lambda grad: grad * only_new)  # every other row keeps its value (Adam, no decay)
    opt = torch.optim.Adam([weight], lr=p.lr)
    template_ids = tokenizer(
        [t.format(token=cce_phrase(p)) for t in p.train_templates], padding="max_length", max_length=tokenizer.model_max_length,
        truncation=True, return_tensors="pt",
    ).input_ids.to(weight.device)  # fmt: skip
    g = torch.Generator().manual_seed(restart_seed(seed, restart))
    losses, snapshots = [], []
    with frozen(pipe.unet):
        for step in tqdm(range(p.budgets[-1]), desc="cce inversion", leave=False, mininterval=2):
            pick = torch.randint(len(latents), (p.batch_size,), generator=g)
            which = torch.randint(len(template_ids), (p.batch_size,), generator=g)
            cond = text_encoder(template_ids[which.to(weight.device)])[0]
            loss = denoising_loss(pipe.unet, pipe.scheduler, latents[pick.to(latents.device)], cond, g).mean()
            check_finite(loss, "cce inversion", step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if step + 1 in p.budgets:
                snapshots.append(weight[new_ids].detach().clone())
    hook.remove()
    weight.requires_grad_(False)
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


def run(pipe: StableDiffusionPipeline, inputs: AttackInputs, p: AttacksParams, restart: int) -> list[AttackResult]:
    """The sweep's entry point: inverts the base model's best concept images."""
    return cce_attack(pipe, inputs.concept_latents, p.n_prompts, p.cce, p.seed, restart)
