"""The four attacks the paper measures erasure against (Section 4, "Attacks").

Each searches prompts that make a model generate the concept anyway and returns them
with the text-encoder states to generate from (one image per prompt):

- CCE (Pham et al.): textual inversion of a new token on the attacked model;
- P4D (Chin et al.): discrete prompt tokens whose attacked-model noise prediction matches
  the original model's for the concept prompt;
- UnlearnDiff (Zhang et al.): discrete prefix tokens with which the attacked model
  denoises a concept image of the original model;
- Ring-A-Bell (Tsai et al.): model-agnostic genetic search for tokens whose text-encoder
  states match a prompt's plus eta times a concept vector.

"The attacked model" is `pipe.unet` as it is; the original model is the same UNet with
its adapters disabled, or the UNet itself when it has none (`original_model`). P4D and
UnlearnDiff optimise discrete tokens as PEZ does: continuous embeddings projected to the
nearest vocabulary embedding in the forward pass, gradients applied to the continuous copy.

Every attack runs at a list of budgets (`budgets`: optimisation steps, iterations or
generations, increasing): one run to the largest, with what it had found at each smaller
budget kept on the way, so the sweep costs one run. `restart` picks another start (seeds and
initial tokens) for the same attack: restart 0 is the attack's own start.
"""

from __future__ import annotations

import copy
import re
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from tqdm import tqdm
from transformers import CLIPTextModel, CLIPTokenizer

from dm2.config import require
from dm2.dark_miner import _noised
from dm2.diffusion import encode_token_embeddings
from dm2.lora import adapters_disabled, frozen
from dm2.params import CCEParams, P4DParams, RingABellParams, UnlearnDiffParams


@dataclass
class AttackResult:
    """What an attack found: readable prompts, the states to generate their images from,
    and what to save beside them."""

    prompts: list[str]
    cond: torch.Tensor  # N x 77 x width text-encoder states, one image per prompt
    columns: dict[str, list] = field(default_factory=dict)  # extra CSV columns, one value per prompt
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # learned embeddings etc.
    log: dict[str, list] = field(default_factory=dict)  # objective per step


# ---------------------------------------------------------------- params


def restart_seed(seed: int, restart: int) -> int:
    """The seed of one restart of an attack: restart 0 keeps the attack's own seed."""
    return seed + 7919 * restart


RESTART_SWAP = 0.5  # restarts > 0 of P4D start from the prompt with this share of its free tokens randomised


def world_words(p: RingABellParams, concept: str, synonyms: dict[str, list[str]]) -> RingABellParams:
    """`p` with Ring-A-Bell's word pairs filled in from the world when not given: the
    concept's synonyms against the other shapes' names."""
    if p.concept_words:
        return p
    require(concept in synonyms, "attacks.ring_a_bell.concept_words", f"{concept!r} is no world shape; name its words")
    return replace(p, concept_words=list(synonyms[concept]), neutral_words=[s for s in synonyms if s != concept])


# ---------------------------------------------------------------- text encoder and tokens


def word_ids(tokenizer: CLIPTokenizer, prompts: list[str]) -> list[list[int]]:
    """Token ids of each prompt without BOS / EOS."""
    return [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]


def full_sequences(tokenizer: CLIPTokenizer, words: list[list[int]]) -> torch.Tensor:
    """BOS + words + EOS, padded to the model length: the tokenizer's own layout."""
    n = tokenizer.model_max_length
    rows = []
    for w in words:
        w = list(w[: n - 2])
        rows.append([tokenizer.bos_token_id, *w, tokenizer.eos_token_id] + [tokenizer.pad_token_id] * (n - 2 - len(w)))
    return torch.tensor(rows, dtype=torch.long)


def searchable(tokenizer: CLIPTokenizer, vocab_size: int, texts: list[str] | None = None) -> torch.Tensor:
    """Boolean mask of the ids a discrete search may use: the whole vocabulary, or only the
    tokens of `texts`, never BOS / EOS / pad."""
    if texts is None:
        allowed = torch.ones(vocab_size, dtype=torch.bool)
    else:
        allowed = torch.zeros(vocab_size, dtype=torch.bool)
        allowed[sorted({i for ids in word_ids(tokenizer, texts) for i in ids})] = True
    allowed[[i for i in tokenizer.all_special_ids if i < vocab_size]] = False
    require(bool(allowed.any()), "attacks.search_space", "leaves no token to search")
    return allowed


def project_to_vocabulary(embeds: torch.Tensor, table: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Nearest allowed vocabulary id by cosine similarity (PEZ) for each row of `embeds` (M x width)."""
    sims = F.normalize(embeds, dim=-1) @ F.normalize(table, dim=-1).T
    return sims.masked_fill(~allowed.to(sims.device), float("-inf")).argmax(-1)


def _decode(tokenizer: CLIPTokenizer, ids: torch.Tensor) -> list[str]:
    return [tokenizer.decode(row.tolist(), skip_special_tokens=True) for row in ids]


def _id_strings(tokenizer: CLIPTokenizer, ids: torch.Tensor) -> list[str]:
    """The non-special ids of each sequence, space-separated (exact where decoded text is not)."""
    special = torch.tensor(tokenizer.all_special_ids)
    return [" ".join(str(i) for i in row[~torch.isin(row, special)].tolist()) for row in ids]


def _fixed_sequences(tokenizer: CLIPTokenizer, tokens: torch.Tensor) -> torch.Tensor:
    """`full_sequences` for M x K token ids, vectorised (the genetic search builds thousands)."""
    m, k = tokens.shape
    ids = torch.full((m, tokenizer.model_max_length), tokenizer.pad_token_id, dtype=torch.long)
    ids[:, 0] = tokenizer.bos_token_id
    ids[:, 1 : k + 1] = tokens
    ids[:, k + 1] = tokenizer.eos_token_id
    return ids


@torch.no_grad()
def _states(text_encoder: CLIPTextModel, ids: torch.Tensor) -> torch.Tensor:
    return text_encoder(ids.to(text_encoder.device))[0]


def original_model(unet: UNet2DConditionModel) -> AbstractContextManager[None]:
    """The original model theta': the erased UNet with its adapters disabled, or the UNet
    itself when it carries none (the base model attacked)."""
    return adapters_disabled(unet) if getattr(unet, "peft_config", None) else nullcontext()


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


# ---------------------------------------------------------------- PEZ-style discrete search


def optimise_tokens(
    text_encoder: CLIPTextModel,
    ids: torch.Tensor,
    free: torch.Tensor,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    budgets: list[int],
    lr: float,
    weight_decay: float,
    allowed: torch.Tensor,
    what: str,
) -> tuple[list[torch.Tensor], torch.Tensor, list[float]]:
    """Optimise the tokens of `ids` (N x L) at the `free` positions; `loss_fn(states)`
    returns one loss per sequence. The loss is taken at the projected (discrete) tokens and
    its gradient applied to their continuous copies. Runs `budgets[-1]` iterations and
    returns (the discrete ids after each budget's iterations, final continuous embeddings at
    the free positions (M x width), mean loss per iteration)."""
    table = text_encoder.get_input_embeddings().weight.detach()
    ids, free = ids.to(table.device), free.to(table.device)
    soft = table[ids[free]].clone().requires_grad_(True)
    opt = torch.optim.AdamW([soft], lr=lr, weight_decay=weight_decay)
    fixed = table[ids]
    losses, snapshots = [], []

    def discrete() -> torch.Tensor:
        out = ids.clone()
        out[free] = project_to_vocabulary(soft.detach(), table, allowed)
        return out

    for step in tqdm(range(budgets[-1]), desc=what, leave=False, mininterval=2):
        hard = project_to_vocabulary(soft.detach(), table, allowed)
        embeds = fixed.clone()
        embeds[free] = soft + (table[hard] - soft).detach()  # straight-through: value of hard, gradient to soft
        loss = loss_fn(encode_token_embeddings(text_encoder, embeds))
        if not torch.isfinite(loss).all():
            raise FloatingPointError(f"{what}: loss is not finite at iteration {step}")
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()  # sequences are independent: each soft token gets its own sequence's gradient
        opt.step()
        losses.append(loss.mean().item())
        if step + 1 in budgets:
            snapshots.append(discrete())
    return snapshots, soft.detach(), losses


def p4d_loss(
    unet: UNet2DConditionModel,
    scheduler: DDIMScheduler,
    x0: torch.Tensor,
    target: torch.Tensor,
    states: torch.Tensor,
    g: torch.Generator,
) -> torch.Tensor:
    """Per sequence: || eps_attacked(x_t | states) - eps_original(x_t | target) ||^2 on x_t
    noised from the original model's image x0 of the concept prompt."""
    x_t, _, t = _noised(scheduler, x0, g)
    with torch.no_grad(), original_model(unet):
        want = unet(x_t, t, encoder_hidden_states=target).sample
    got = unet(x_t, t, encoder_hidden_states=states).sample
    return (got - want).pow(2).mean(dim=(1, 2, 3))


def denoising_loss(
    unet: UNet2DConditionModel, scheduler: DDIMScheduler, x0: torch.Tensor, states: torch.Tensor, g: torch.Generator
) -> torch.Tensor:
    """Per sequence: || eps - eps_attacked(x_t | states) ||^2 (UnlearnDiff, textual inversion)."""
    x_t, noise, t = _noised(scheduler, x0, g)
    return (unet(x_t, t, encoder_hidden_states=states).sample - noise).pow(2).mean(dim=(1, 2, 3))


def _discrete_attack(
    pipe: StableDiffusionPipeline,
    prompts: list[str],
    ids: torch.Tensor,
    free: torch.Tensor,
    make_loss: Callable[[slice, torch.Generator], Callable[[torch.Tensor], torch.Tensor]],
    budgets: list[int],
    lr: float,
    weight_decay: float,
    seed: int,
    batch_size: int,
    allowed: torch.Tensor,
    what: str,
) -> list[AttackResult]:
    """`optimise_tokens` over chunks of prompts; one result per budget."""
    snapshots: list[list[torch.Tensor]] = [[] for _ in budgets]
    softs, curves = [], []
    with frozen(pipe.unet), frozen(pipe.text_encoder):
        for k, part in enumerate(_chunks(len(prompts), batch_size)):
            g = torch.Generator().manual_seed(seed * 1_000_003 + k)
            found, soft, losses = optimise_tokens(
                pipe.text_encoder, ids[part], free[part], make_loss(part, g), budgets, lr, weight_decay, allowed, f"{what} {k}"
            )
            for per_budget, ids_at in zip(snapshots, found):
                per_budget.append(ids_at.cpu())
            softs.append(soft.cpu())
            curves.append(losses)
    sizes = [s.stop - s.start for s in _chunks(len(prompts), batch_size)]
    mean_curve = [sum(c[i] * n for c, n in zip(curves, sizes)) / len(prompts) for i in range(budgets[-1])]
    results = []
    for per_budget in snapshots:
        final = torch.cat(per_budget)
        results.append(
            AttackResult(
                prompts=_decode(pipe.tokenizer, final),
                cond=_states(pipe.text_encoder, final),
                columns={"token_ids": _id_strings(pipe.tokenizer, final), "source_prompt": list(prompts)},
                tensors={"ids": final, "free": free},
                log={"loss": mean_curve},
            )
        )
    results[-1].tensors["soft_embeddings"] = torch.cat(softs)  # the continuous copies at the free positions
    return results


def _vocabulary(pipe: StableDiffusionPipeline, allowed: torch.Tensor | None) -> torch.Tensor:
    return searchable(pipe.tokenizer, pipe.text_encoder.get_input_embeddings().num_embeddings) if allowed is None else allowed


def p4d_attack(
    pipe: StableDiffusionPipeline,
    prompts: list[str],
    x0: torch.Tensor,
    p: P4DParams,
    seed: int,
    batch_size: int,
    allowed: torch.Tensor | None = None,
    restart: int = 0,
) -> list[AttackResult]:
    """P4D: each normal prompt's first `p.tokens` tokens become free, initialised as they
    are (restarts > 0: with a share `RESTART_SWAP` of them randomised), and are optimised so
    the attacked model predicts the noise the original model predicts for the normal
    prompt, on x_t noised from `x0` (the original model's image for that prompt, N x 4 x h
    x w). `allowed`: the ids tokens may take (`searchable`; default the whole vocabulary).
    One result per budget of `p.budgets`."""
    require(len(prompts) > 0, "attacks.n_prompts", "no prompts to attack")
    require(p.tokens > 0, "attacks.p4d.tokens", f"must be positive, got {p.tokens}")
    words = word_ids(pipe.tokenizer, prompts)
    require(all(words), "attacks.n_prompts", "a prompt without any token cannot be attacked")
    allowed = _vocabulary(pipe, allowed)
    ids = full_sequences(pipe.tokenizer, words)
    free = torch.zeros_like(ids, dtype=torch.bool)
    for i, w in enumerate(words):
        free[i, 1 : 1 + min(len(w), p.tokens, ids.shape[1] - 2)] = True
    target = _states(pipe.text_encoder, ids)
    seed = restart_seed(seed, restart)
    start = ids.clone()
    if restart > 0:
        g = torch.Generator().manual_seed(seed)
        allowed_ids = allowed.nonzero().squeeze(1)
        swap = free & (torch.rand(ids.shape, generator=g) < RESTART_SWAP)
        start[swap] = allowed_ids[torch.randint(len(allowed_ids), (int(swap.sum()),), generator=g)]

    def make_loss(part: slice, g: torch.Generator) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda states: p4d_loss(pipe.unet, pipe.scheduler, x0[part], target[part], states, g)

    return _discrete_attack(pipe, prompts, start, free, make_loss, p.budgets, p.lr, p.weight_decay, seed, batch_size, allowed, "p4d")


def unlearndiff_attack(
    pipe: StableDiffusionPipeline,
    prompts: list[str],
    x0: torch.Tensor,
    p: UnlearnDiffParams,
    seed: int,
    batch_size: int,
    allowed: torch.Tensor | None = None,
    restart: int = 0,
) -> list[AttackResult]:
    """UnlearnDiff: `p.prefix_tokens` free tokens before each normal prompt (restart 0:
    `p.prefix_init` repeated, or random allowed ids; other restarts: random), optimised so
    the attacked model denoises `x0`, the original model's image for that prompt and seed.
    One result per budget of `p.budgets`."""
    require(len(prompts) > 0, "attacks.n_prompts", "no prompts to attack")
    require(p.prefix_tokens > 0, "attacks.unlearndiff.prefix_tokens", f"must be positive, got {p.prefix_tokens}")
    allowed = _vocabulary(pipe, allowed)
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

    def make_loss(part: slice, g: torch.Generator) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda states: denoising_loss(pipe.unet, pipe.scheduler, x0[part], states, g)

    return _discrete_attack(pipe, prompts, ids, free, make_loss, p.budgets, p.lr, p.weight_decay, seed, batch_size, allowed, "unlearndiff")


# ---------------------------------------------------------------- CCE


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
            states = text_encoder(template_ids[which.to(weight.device)])[0]
            loss = denoising_loss(pipe.unet, pipe.scheduler, latents[pick.to(latents.device)], states, g).mean()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"cce inversion: loss is {loss.item()} at step {step}")
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
    """CCE: invert the concept into new tokens on the attacked model, then `n_prompts`
    prompts from `p.prompt_templates` (cycled) that use them; one result per budget."""
    require(n_prompts > 0, "attacks.n_prompts", f"must be positive, got {n_prompts}")
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
                cond=_states(text_encoder, ids),
                columns={"template": templates},
                tensors={"embedding": embedding.cpu()},
                log={"loss": losses},
            )
        )
    return results


# ---------------------------------------------------------------- Ring-A-Bell


def _swap_word(prompt: str, word: str, replacement: str) -> str:
    return re.sub(rf"\b{re.escape(word)}\b", replacement, prompt, flags=re.IGNORECASE)


def concept_vector(pipe: StableDiffusionPipeline, prompts: list[str], concept_words: list[str], neutral_words: list[str]) -> torch.Tensor:
    """Mean over pairs of text-encoder states (77 x width) of a prompt naming the concept
    minus the same prompt with that word replaced by each neutral word."""
    pairs = [
        (q, _swap_word(q, w, n))
        for q in prompts
        for w in concept_words
        if re.search(rf"\b{re.escape(w)}\b", q, flags=re.IGNORECASE)
        for n in neutral_words
    ]
    require(bool(pairs), "attacks.ring_a_bell.concept_words", f"none of {concept_words} occurs in the prompts")
    with_concept = full_sequences(pipe.tokenizer, word_ids(pipe.tokenizer, [a for a, _ in pairs]))
    without = full_sequences(pipe.tokenizer, word_ids(pipe.tokenizer, [b for _, b in pairs]))
    return (_states(pipe.text_encoder, with_concept) - _states(pipe.text_encoder, without)).mean(0)


def _fitness(text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer, pop: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-MSE between the states of each individual (N x P x K tokens) and its prompt's target (N x 77 x width)."""
    n, size, k = pop.shape
    states = _states(text_encoder, _fixed_sequences(tokenizer, pop.reshape(n * size, k))).reshape(n, size, *target.shape[1:])
    return -(states - target.unsqueeze(1).to(states.device)).pow(2).mean(dim=(2, 3)).cpu()


def genetic_search(
    text_encoder: CLIPTextModel,
    tokenizer: CLIPTokenizer,
    target: torch.Tensor,
    init: torch.Tensor | None,
    p: RingABellParams,
    g: torch.Generator,
    allowed: torch.Tensor,
) -> tuple[list[torch.Tensor], list[list[float]]]:
    """Genetic search, per prompt, for K tokens (ids where `allowed`) whose states match
    `target` (N x 77 x width). The population starts from `init` (N x K: the first
    individual as is, the others mutated copies) or, if None, at random. Elites are kept
    with their fitness, so the best fitness never drops. Runs `p.budgets[-1]` generations;
    returns (best tokens N x K after each budget's generations, best fitness per prompt for
    the initial population and after every generation)."""
    allowed = allowed.nonzero().squeeze(1)
    n, size, k = target.shape[0], p.population, p.tokens

    def random_tokens(*shape: int) -> torch.Tensor:
        return allowed[torch.randint(len(allowed), shape, generator=g)]

    def mutate(pop: torch.Tensor) -> torch.Tensor:
        hit = torch.rand(pop.shape, generator=g) < p.mutation_rate
        return torch.where(hit, random_tokens(*pop.shape), pop)

    if init is None:
        pop = random_tokens(n, size, k)
    else:
        start = init.unsqueeze(1).expand(n, size, k)
        pop = torch.cat([start[:, :1], mutate(start[:, 1:])], dim=1)
    fit = _fitness(text_encoder, tokenizer, pop, target)
    history = [fit.max(1).values.tolist()]
    rows = torch.arange(n).unsqueeze(1)
    best = []
    for generation in tqdm(range(p.budgets[-1]), desc="ring-a-bell", leave=False, mininterval=2):
        order = fit.argsort(dim=1, descending=True)
        pop, fit = pop[rows, order], fit[rows, order]  # rank 0 is the best
        n_child = size - p.elite
        # Tournaments of two: the better-ranked of two random individuals is a parent.
        a = torch.randint(size, (n, n_child, 2), generator=g).min(-1).values
        b = torch.randint(size, (n, n_child, 2), generator=g).min(-1).values
        cut = torch.randint(1, max(k, 2), (n, n_child, 1), generator=g)  # one-point crossover
        cross = (torch.rand(n, n_child, 1, generator=g) < p.crossover_rate) & (torch.arange(k) >= cut)
        children = mutate(torch.where(cross, pop[rows, b], pop[rows, a]))
        pop = torch.cat([pop[:, : p.elite], children], dim=1)
        fit = torch.cat([fit[:, : p.elite], _fitness(text_encoder, tokenizer, children, target)], dim=1)
        history.append(fit.max(1).values.tolist())
        if generation + 1 in p.budgets:
            best.append(pop[torch.arange(n), fit.argmax(1)])
    return best, history


def ring_a_bell_attack(
    pipe: StableDiffusionPipeline,
    prompts: list[str],
    p: RingABellParams,
    seed: int,
    batch_size: int,
    allowed: torch.Tensor | None = None,
    restart: int = 0,
) -> list[AttackResult]:
    """Ring-A-Bell: text encoder only, so the same prompts attack any UNet. Target per
    normal prompt: its states + eta * concept vector; found: K tokens by genetic search
    (restarts differ in their seed). One result per budget of `p.budgets`."""
    require(len(prompts) > 0, "attacks.n_prompts", "no prompts to attack")
    require(p.tokens > 0, "attacks.ring_a_bell.tokens", f"must be positive, got {p.tokens}")
    vector = concept_vector(pipe, prompts, p.concept_words, p.neutral_words)
    words = word_ids(pipe.tokenizer, prompts)
    require(all(words), "attacks.n_prompts", "a prompt without any token cannot be attacked")
    room = pipe.tokenizer.model_max_length - 2
    require(p.tokens <= room, "attacks.ring_a_bell.tokens", f"at most {room} fit the context, got {p.tokens}")
    targets = _states(pipe.text_encoder, full_sequences(pipe.tokenizer, words)) + p.eta * vector
    # From the prompt: its tokens repeated to length K.
    init = torch.tensor([[w[i % len(w)] for i in range(p.tokens)] for w in words]) if p.init_from_prompt else None
    allowed = _vocabulary(pipe, allowed)
    seed = restart_seed(seed, restart)
    found: list[list[torch.Tensor]] = [[] for _ in p.budgets]
    history = []
    for k, part in enumerate(_chunks(len(prompts), batch_size)):
        g = torch.Generator().manual_seed(seed * 1_000_003 + k)
        best, curve = genetic_search(pipe.text_encoder, pipe.tokenizer, targets[part], None if init is None else init[part], p, g, allowed)
        for per_budget, tokens in zip(found, best):
            per_budget.append(tokens)
        history.append(curve)
    per_generation = [sum((h[i] for h in history), []) for i in range(p.budgets[-1] + 1)]
    results = []
    for per_budget in found:
        tokens = torch.cat(per_budget)
        ids = _fixed_sequences(pipe.tokenizer, tokens)
        results.append(
            AttackResult(
                prompts=_decode(pipe.tokenizer, ids),
                cond=_states(pipe.text_encoder, ids),
                columns={"token_ids": [" ".join(map(str, row)) for row in tokens.tolist()], "source_prompt": list(prompts)},
                tensors={"concept_vector": vector.cpu(), "tokens": tokens},
                log={"best_fitness": per_generation},  # per generation, one value per prompt
            )
        )
    return results
