"""The seeded minibatch loop the world's three models train with: a cosine learning rate
after a warm-up, and a loss that turns non-finite stops the run."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from dm2.core.steps import check_finite
from dm2.world.params import TrainParams


def cosine_lr(step: int, steps: int, warmup: int = 100) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train_loop(
    params: list[torch.nn.Parameter],
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    n_items: int,
    train: TrainParams,
    seed: int,
    desc: str,
) -> list[float]:
    """AdamW with warm-up and cosine decay over random minibatches of item indices.

    `loss_fn(indices)` returns the loss of one minibatch. Returns the loss per step.
    """
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(params, lr=train.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_lr(s, train.steps))
    losses = []
    bar = tqdm(range(train.steps), desc=desc, mininterval=5)
    for step in bar:
        idx = torch.randint(0, n_items, (train.batch_size,), generator=generator)
        loss = loss_fn(idx)
        check_finite(loss, desc, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    return losses
