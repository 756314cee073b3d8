"""Ring-A-Bell (Tsai et al.): model-agnostic genetic search for tokens whose text-encoder
states match a prompt's plus eta times a concept vector. It needs only the text encoder,
which no method here changes, so its prompts are searched once, on the base model
(`dm2.attacks.sweep.prepare_attacks`), and attack every erased model."""

from __future__ import annotations

import re
from dataclasses import replace

import torch
from diffusers import StableDiffusionPipeline
from tqdm import tqdm
from transformers import CLIPTextModel, CLIPTokenizer

from dm2.attacks.common import (
    AttackInputs,
    AttackResult,
    BudgetJudge,
    chunks,
    decode,
    fixed_sequences,
    full_sequences,
    restart_seed,
    states,
    word_ids,
)
from dm2.attacks.params import AttacksParams, RingABellParams
from dm2.attacks.pez import vocabulary
from dm2.core.config import require
from dm2.core.steps import loop_seed


def world_words(p: RingABellParams, concept: str, synonyms: dict[str, list[str]]) -> RingABellParams:
    """`p` with Ring-A-Bell's word pairs filled in from the world when not given: the
    concept's synonyms against the other shapes' names."""
    if p.concept_words:
        return p
    require(concept in synonyms, "attacks.ring_a_bell.concept_words", f"{concept!r} is no world shape; name its words")
    return replace(p, concept_words=list(synonyms[concept]), neutral_words=[s for s in synonyms if s != concept])


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
    return (states(pipe.text_encoder, with_concept) - states(pipe.text_encoder, without)).mean(0)


def _fitness(text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer, pop: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-MSE between the states of each individual (N x P x K tokens) and its prompt's target (N x 77 x width)."""
    n, size, k = pop.shape
    found = states(text_encoder, fixed_sequences(tokenizer, pop.reshape(n * size, k))).reshape(n, size, *target.shape[1:])
    return -(found - target.unsqueeze(1).to(found.device)).pow(2).mean(dim=(2, 3)).cpu()


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
    """Text encoder only, so the same prompts attack any UNet. Target per
    normal prompt: its states + eta * concept vector; found: K tokens by genetic search
    (restarts differ in their seed). One result per budget of `p.budgets`."""
    require(len(prompts) > 0, "attacks.n_prompts", "no prompts to attack")
    vector = concept_vector(pipe, prompts, p.concept_words, p.neutral_words)
    words = word_ids(pipe.tokenizer, prompts)
    require(all(words), "attacks.n_prompts", "a prompt without any token cannot be attacked")
    targets = states(pipe.text_encoder, full_sequences(pipe.tokenizer, words)) + p.eta * vector
    # From the prompt: its tokens repeated to length K.
    init = torch.tensor([[w[i % len(w)] for i in range(p.tokens)] for w in words]) if p.init_from_prompt else None
    allowed = vocabulary(pipe, allowed)
    seed = restart_seed(seed, restart)
    found: list[list[torch.Tensor]] = [[] for _ in p.budgets]
    history = []
    for k, part in enumerate(chunks(len(prompts), batch_size)):
        g = torch.Generator().manual_seed(loop_seed(seed, k))
        best, curve = genetic_search(pipe.text_encoder, pipe.tokenizer, targets[part], None if init is None else init[part], p, g, allowed)
        for per_budget, tokens in zip(found, best):
            per_budget.append(tokens)
        history.append(curve)
    per_generation = [sum((h[i] for h in history), []) for i in range(p.budgets[-1] + 1)]
    results = []
    for per_budget in found:
        tokens = torch.cat(per_budget)
        ids = fixed_sequences(pipe.tokenizer, tokens)
        results.append(
            AttackResult(
                prompts=decode(pipe.tokenizer, ids),
                cond=states(pipe.text_encoder, ids),
                columns={"token_ids": [" ".join(map(str, row)) for row in tokens.tolist()], "source_prompt": list(prompts)},
                tensors={"concept_vector": vector.cpu(), "tokens": tokens},
                log={"best_fitness": per_generation},  # per generation, one value per prompt
            )
        )
    return results


def run(pipe: StableDiffusionPipeline, inputs: AttackInputs, p: AttacksParams, restart: int, judge: BudgetJudge) -> list[AttackResult]:
    """The sweep's entry point: the prompts searched once on the base model; found
    without the attacked model, so the sweep judges them afterwards."""
    return inputs.ring[restart]
