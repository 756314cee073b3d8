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

from dm2.attacks.common import AttackResult, BudgetJudge, chunks, decode, id_strings, searchable, states
from dm2.core.steps import check_finite, loop_seed
from dm2.erasure.lora import frozen
from dm2.models.diffusion import encode_token_embeddings

# Per chunk of sequences: (chunk, the rows of it still searched, their text-encoder states,
# the chunk's generator) -> one loss per row. Its random draws cover the whole chunk.
ChunkLoss = Callable[[slice, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]
# The same for one chunk: (rows still searched, their states) -> one loss per row.
RowsLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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


def _loss_curve(parts: list[list[tuple[float, int]]]) -> list[float | None]:
    """Per step, the mean loss over the sequences still searched in every chunk (None once
    none is)."""
    curve = []
    for step in zip(*parts):
        total, count = sum(s for s, _ in step), sum(n for _, n in step)
        curve.append(total / count if count else None)
    return curve


class ChunkSearch:
    """The search of one chunk of sequences, advanced budget by budget. Sequences that
    `leave` keep the ids they had; the others take the steps they would take beside them:
    each sequence's loss, gradient and AdamW update are its own, and the chunk's noise is
    drawn for every sequence and the leavers' share dropped. (Up to rounding: kernels on
    fewer rows may sum in another order, about 1e-07 on the tiny test models.)"""

    def __init__(self, text_encoder: CLIPTextModel, search: TokenSearch, loss_fn: RowsLoss, what: str):
        self.text_encoder, self.loss_fn, self.what = text_encoder, loss_fn, what
        self.table = text_encoder.get_input_embeddings().weight.detach()
        self.ids, self.free = search.ids.to(self.table.device), search.free.to(self.table.device)
        self.project = Projection(self.table, search.allowed)
        self.soft = self.table[self.ids[self.free]].clone().requires_grad_(True)
        self.opt = torch.optim.AdamW([self.soft], lr=search.lr, weight_decay=search.weight_decay)
        self.fixed = self.table[self.ids]
        self.row_of = self.free.nonzero()[:, 0]  # the sequence of each free position (row of `soft`)
        self.active = torch.ones(len(self.ids), dtype=torch.bool, device=self.table.device)
        self.found = self.ids.clone()  # discrete ids: now for active sequences, at leaving for the rest
        self.kept = self.soft.detach().clone()  # continuous copies, likewise
        self.steps = 0
        self.losses: list[tuple[float, int]] = []  # per step: summed loss, sequences searched

    def advance(self, to_step: int) -> None:
        """Optimise the active sequences up to iteration `to_step`: the loss at the
        projected (discrete) tokens, its gradient applied to their continuous copies."""
        rows = self.active.nonzero().squeeze(1)
        for step in tqdm(range(self.steps, to_step), desc=self.what, leave=False, mininterval=2):
            if not len(rows):  # every sequence has left: nothing to compute
                self.losses.append((0.0, 0))
                continue
            hard = self.project(self.soft.detach())
            embeds = self.fixed.clone()
            embeds[self.free] = self.soft + (self.table[hard] - self.soft).detach()  # straight-through
            loss = self.loss_fn(rows, encode_token_embeddings(self.text_encoder, embeds[rows]))
            check_finite(loss, self.what, step)
            self.opt.zero_grad(set_to_none=True)
            loss.sum().backward()  # sequences are independent: each soft token gets its own sequence's gradient
            self.opt.step()
            self.losses.append((loss.sum().item(), len(rows)))
        self.steps = to_step
        moving = self.active[self.row_of]
        self.kept[moving] = self.soft.detach()[moving]
        now = self.ids.clone()
        now[self.free] = self.project(self.soft.detach())
        self.found[self.active] = now[self.active]

    def leave(self, done: torch.Tensor) -> None:
        """Stop searching the sequences marked in `done` (bool, one per sequence)."""
        self.active &= ~done.to(self.active.device)


def discrete_attack(
    pipe: StableDiffusionPipeline,
    prompts: list[str],
    search: TokenSearch,
    loss: ChunkLoss,
    seed: int,
    batch_size: int,
    what: str,
    judge: BudgetJudge | None = None,
) -> list[AttackResult]:
    """The token search over chunks of `batch_size` prompts, chunk k drawing from
    `loop_seed(seed, k)`, run to `search.budgets[-1]` iterations; one result per budget.
    `judge`, called with each budget's result, returns the prompts that need no further
    search (attacked by every judge): they leave the search and keep the tokens that
    attacked, the others go on as they would have (`ChunkSearch`)."""
    parts = chunks(len(prompts), batch_size)
    results = []
    with frozen(pipe.unet), frozen(pipe.text_encoder):
        searches = []
        for k, part in enumerate(parts):
            g = torch.Generator().manual_seed(loop_seed(seed, k))
            chunk = TokenSearch(search.ids[part], search.free[part], search.allowed, search.budgets, search.lr, search.weight_decay)
            searches.append(ChunkSearch(pipe.text_encoder, chunk, lambda rows, s, part=part, g=g: loss(part, rows, s, g), f"{what} {k}"))
        for budget in search.budgets:
            for chunk_search in searches:
                chunk_search.advance(budget)
            final = torch.cat([s.found.cpu() for s in searches])
            results.append(
                AttackResult(
                    prompts=decode(pipe.tokenizer, final),
                    cond=states(pipe.text_encoder, final),
                    columns={"token_ids": id_strings(pipe.tokenizer, final), "source_prompt": list(prompts)},
                    tensors={"ids": final, "free": search.free},
                    log={"loss": _loss_curve([s.losses for s in searches])},
                )
            )
            if judge is not None:
                done = judge(results[-1])
                for chunk_search, part in zip(searches, parts):
                    chunk_search.leave(done[part])
    results[-1].tensors["soft_embeddings"] = torch.cat([s.kept.cpu() for s in searches])  # the continuous copies at the free positions
    return results


def vocabulary(pipe: StableDiffusionPipeline, allowed: torch.Tensor | None) -> torch.Tensor:
    """`allowed`, or every id of the pipeline's vocabulary but the special ones."""
    return searchable(pipe.tokenizer, pipe.text_encoder.get_input_embeddings().num_embeddings) if allowed is None else allowed
