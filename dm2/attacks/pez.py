"""The discrete token search P4D and UnlearnDiff share, as PEZ does it: continuous token
embeddings projected to the nearest allowed vocabulary embedding in the forward pass, the
gradient applied to the continuous copy (straight-through)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline
from tqdm import tqdm
from transformers import CLIPTextModel

from dm2.attacks.common import AttackResult, chunks, decode, id_strings, searchable, states
from dm2.diffusion import encode_token_embeddings
from dm2.lora import frozen
from dm2.steps import check_finite, loop_seed

# Per chunk of sequences: (chunk, its text-encoder states, generator) -> one loss per sequence.
ChunkLoss = Callable[[slice, torch.Tensor, torch.Generator], torch.Tensor]


@dataclass
class TokenSearch:
    """Where and how to search: the starting sequences (N x L ids), the positions that may
    change (N x L bool), the ids they may take, the budgets and AdamW's settings."""

    ids: torch.Tensor
    free: torch.Tensor
    allowed: torch.Tensor
    budgets: list[int]
    lr: float
    weight_decay: float


class Projection:
    """Nearest allowed vocabulary id by cosine similarity (PEZ). Only the allowed rows are
    scored, normalised once: the world's search space is 60 of 49,408 ids, and scoring the
    whole table took about a quarter of a P4D step."""

    def __init__(self, table: torch.Tensor, allowed: torch.Tensor):
        self.ids = allowed.to(table.device).nonzero().squeeze(1)
        self.unit = F.normalize(table[self.ids], dim=-1)

    def __call__(self, embeds: torch.Tensor) -> torch.Tensor:
        """The nearest allowed id for each row of `embeds` (M x width)."""
        return self.ids[(F.normalize(embeds, dim=-1) @ self.unit.T).argmax(-1)]


def optimise_tokens(
    text_encoder: CLIPTextModel, search: TokenSearch, loss_fn: Callable[[torch.Tensor], torch.Tensor], what: str
) -> tuple[list[torch.Tensor], torch.Tensor, list[float]]:
    """Optimise the tokens of `search.ids` at the free positions; `loss_fn(states)` returns
    one loss per sequence. The loss is taken at the projected (discrete) tokens and its
    gradient applied to their continuous copies. Runs `search.budgets[-1]` iterations and
    returns (the discrete ids after each budget's iterations, final continuous embeddings at
    the free positions (M x width), mean loss per iteration)."""
    table = text_encoder.get_input_embeddings().weight.detach()
    ids, free = search.ids.to(table.device), search.free.to(table.device)
    project = Projection(table, search.allowed)
    soft = table[ids[free]].clone().requires_grad_(True)
    opt = torch.optim.AdamW([soft], lr=search.lr, weight_decay=search.weight_decay)
    fixed = table[ids]
    losses, snapshots = [], []

    def discrete() -> torch.Tensor:
        out = ids.clone()
        out[free] = project(soft.detach())
        return out

    for step in tqdm(range(search.budgets[-1]), desc=what, leave=False, mininterval=2):
        hard = project(soft.detach())
        embeds = fixed.clone()
        embeds[free] = soft + (table[hard] - soft).detach()  # straight-through: value of hard, gradient to soft
        loss = loss_fn(encode_token_embeddings(text_encoder, embeds))
        check_finite(loss, what, step)
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()  # sequences are independent: each soft token gets its own sequence's gradient
        opt.step()
        losses.append(loss.mean().item())
        if step + 1 in search.budgets:
            snapshots.append(discrete())
    return snapshots, soft.detach(), losses


def discrete_attack(
    pipe: StableDiffusionPipeline, prompts: list[str], search: TokenSearch, loss: ChunkLoss, seed: int, batch_size: int, what: str
) -> list[AttackResult]:
    """`optimise_tokens` over chunks of `batch_size` prompts, chunk k drawing from
    `loop_seed(seed, k)`; one result per budget."""
    snapshots: list[list[torch.Tensor]] = [[] for _ in search.budgets]
    softs, curves = [], []
    parts = chunks(len(prompts), batch_size)
    with frozen(pipe.unet), frozen(pipe.text_encoder):
        for k, part in enumerate(parts):
            g = torch.Generator().manual_seed(loop_seed(seed, k))
            chunk = TokenSearch(search.ids[part], search.free[part], search.allowed, search.budgets, search.lr, search.weight_decay)
            found, soft, losses = optimise_tokens(pipe.text_encoder, chunk, lambda s: loss(part, s, g), f"{what} {k}")
            for per_budget, ids_at in zip(snapshots, found):
                per_budget.append(ids_at.cpu())
            softs.append(soft.cpu())
            curves.append(losses)
    sizes = [s.stop - s.start for s in parts]
    mean_curve = [sum(c[i] * n for c, n in zip(curves, sizes)) / len(prompts) for i in range(search.budgets[-1])]
    results = []
    for per_budget in snapshots:
        final = torch.cat(per_budget)
        results.append(
            AttackResult(
                prompts=decode(pipe.tokenizer, final),
                cond=states(pipe.text_encoder, final),
                columns={"token_ids": id_strings(pipe.tokenizer, final), "source_prompt": list(prompts)},
                tensors={"ids": final, "free": search.free},
                log={"loss": mean_curve},
            )
        )
    results[-1].tensors["soft_embeddings"] = torch.cat(softs)  # the continuous copies at the free positions
    return results


def vocabulary(pipe: StableDiffusionPipeline, allowed: torch.Tensor | None) -> torch.Tensor:
    """`allowed`, or every id of the pipeline's vocabulary but the special ones."""
    return searchable(pipe.tokenizer, pipe.text_encoder.get_input_embeddings().num_embeddings) if allowed is None else allowed
