"""The three steps of a Dark Miner loop (paper Section 3.2, Appendix A).

An embedding `c` is a sequence of L free token embeddings (the text encoder's input
space, as in textual inversion, with no words behind it); `encode` turns it, `0 * c` and
`-c` into the states the UNet is conditioned on. Keeping `c` on the text encoder's input
side keeps the mined conditions on the manifold real prompts live on, so circumventing
them reaches the prompts that name the concept in other words.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, UNet2DConditionModel
from tqdm import tqdm

from dm2.core.steps import check_finite
from dm2.erasure.lora import adapters_disabled
from dm2.erasure.params import CircumventParams, MineParams, StepSchedule
from dm2.models.diffusion import noised

Encoder = Callable[[torch.Tensor], torch.Tensor]  # free embeddings (N x L x w) -> UNet states


def make_optimizer(p: StepSchedule, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=p.lr) if p.optimizer == "sgd" else torch.optim.Adam(params, lr=p.lr)


def _step(opt: torch.optim.Optimizer, sched: StepSchedule, epoch: int, loss: torch.Tensor, params: list[torch.Tensor], what: str) -> None:
    check_finite(loss, what, epoch)
    for group in opt.param_groups:
        group["lr"] = sched.lr_at(epoch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, sched.grad_clip)
    opt.step()


def mining_loss(
    unet: UNet2DConditionModel, scheduler: DDIMScheduler, x0: torch.Tensor, c: torch.Tensor, encode: Encoder, g: torch.Generator
) -> torch.Tensor:
    """L_M: denoising error of the (adapted, frozen) UNet on pool latents `x0` given `c`."""
    x_t, noise, t = noised(scheduler, x0, g)
    pred = unet(x_t, t, encoder_hidden_states=encode(c).expand(x0.shape[0], -1, -1)).sample
    return F.mse_loss(pred, noise)


def mine(
    unet: UNet2DConditionModel,
    scheduler: DDIMScheduler,
    pool_latents: torch.Tensor,
    init: torch.Tensor,
    encode: Encoder,
    p: MineParams,
    g: torch.Generator,
    what: str = "mine",
    max_norm: float | None = None,
) -> tuple[torch.Tensor, list[float]]:
    """Optimise a free embedding (1 x L x width, from `init`) so the current model
    denoises the k sampled pool images best: the text most likely to produce them.
    With `max_norm`, every token is projected back into that L2 ball after each step."""
    c = init.detach().clone().requires_grad_(True)
    opt = make_optimizer(p, [c])
    losses = []
    for epoch in tqdm(range(p.epochs), desc=what, leave=False, mininterval=2):
        loss = mining_loss(unet, scheduler, pool_latents, c, encode, g)
        _step(opt, p, epoch, loss, [c], what)
        if max_norm is not None:
            with torch.no_grad():
                c.mul_((max_norm / c.norm(dim=-1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0))
        losses.append(loss.item())
    return c.detach(), losses


def delta_cosine(f_c: torch.Tensor, f_r: torch.Tensor, f_e: torch.Tensor) -> float:
    """s(c) = mean over the k pool images of cos(Enc(x_c) - Enc(x_r), Enc(x_e) - Enc(x_r)).

    f_c: (n, D) features of n images made from c, the cosine averaged over them;
    f_r: (m, D) features of m reference images ("a photo"), Enc(x_r) being their mean;
    f_e: (k, D) features of the pool images used for mining. The paper: n = m = 1."""
    d = f_e.shape[-1]
    ref = f_r.reshape(-1, d).mean(0)
    d_c = (f_c.reshape(-1, d) - ref)[:, None, :]  # n x 1 x D
    d_e = (f_e - ref)[None, :, :]  # 1 x k x D
    return F.cosine_similarity(d_c, d_e, dim=-1).mean().item()


def circumvent_losses(
    unet: UNet2DConditionModel,
    scheduler: DDIMScheduler,
    x0: torch.Tensor,
    states: torch.Tensor,
    g: torch.Generator,
    keep: tuple[torch.Tensor, torch.Tensor] | None = None,
    frozen_on_c: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`states`: UNet conditions for [c, 0*c, -c, c0] (4 x T x width). l_c pulls the adapted
    model's prediction for c to the original model's for the anchor c0; l_p keeps the
    adapted model equal to the original on c0, 0*c and -c, and, with `keep` (latents of
    preserved prompts, their states), on those prompts' own images.

    The original model's prediction for c is never used. `frozen_on_c` (default: on CPU
    only) still computes it, in one batch with the other three: on CPU a batch of 3b is
    not bit-identical to the first rows of 4b, and the world's recorded results were made
    with 4b. On a GPU the unused quarter (8 % of a step's FLOPs at SD scale) is skipped."""
    x_t, _, t = noised(scheduler, x0, g)
    b = x0.shape[0]  # the images x, each seen under all four conditions
    x4, t4, s4 = x_t.repeat(4, 1, 1, 1), t.repeat(4), states.repeat_interleave(b, 0)
    if frozen_on_c is None:
        frozen_on_c = x_t.device.type == "cpu"
    with torch.no_grad(), adapters_disabled(unet):
        if frozen_on_c:
            orig = unet(x4, t4, encoder_hidden_states=s4).sample.split(b)
        else:
            orig = (None, *unet(x4[b:], t4[b:], encoder_hidden_states=s4[b:]).sample.split(b))
    new = unet(x4, t4, encoder_hidden_states=s4).sample.split(b)
    l_c = F.mse_loss(new[0], orig[3])
    l_p = F.mse_loss(new[3], orig[3]) + F.mse_loss(new[1], orig[1]) + F.mse_loss(new[2], orig[2])
    if keep is not None:
        k_t, _, k_step = noised(scheduler, keep[0], g)
        with torch.no_grad(), adapters_disabled(unet):
            k_orig = unet(k_t, k_step, encoder_hidden_states=keep[1]).sample
        l_p = l_p + F.mse_loss(unet(k_t, k_step, encoder_hidden_states=keep[1]).sample, k_orig)
    return l_c, l_p


def circumvent_states(c: torch.Tensor, anchor_states: torch.Tensor, encode: Encoder) -> torch.Tensor:
    """The four conditions of L_C, computed once per circumventing step set: c, 0*c and
    -c through `encode`, and the anchor's states."""
    with torch.no_grad():
        return torch.cat([encode(torch.cat([c, 0 * c, -c])), anchor_states])


def pick_target(n: int, r: float, g: torch.Generator) -> int:
    """Index 0 (this loop's embedding) with probability r, else one of 1..n-1 uniformly."""
    if n == 1 or torch.rand(1, generator=g).item() < r:
        return 0
    return 1 + int(torch.randint(n - 1, (1,), generator=g).item())


def circumvent(
    unet: UNet2DConditionModel,
    scheduler: DDIMScheduler,
    lora_params: list[torch.nn.Parameter],
    targets: list[tuple[torch.Tensor, torch.Tensor]],
    p: CircumventParams,
    g: torch.Generator,
    what: str = "circumvent",
    keep: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[list[float], list[float]]:
    """Train the adapters on L_C = alpha_c l_c + alpha_p l_p. `targets` holds, per embedding,
    the latents x the original model generated from it (made once by the caller) and its
    states from `circumvent_states`; with several, every epoch trains on one of them,
    picked by `pick_target` (the first is this loop's). `keep`: see `circumvent_losses`."""
    opt = make_optimizer(p, lora_params)
    l_cs, l_ps = [], []
    for epoch in tqdm(range(p.epochs), desc=what, leave=False, mininterval=2):
        x0, states = targets[pick_target(len(targets), p.r, g)]
        l_c, l_p = circumvent_losses(unet, scheduler, x0, states, g, keep)
        _step(opt, p, epoch, p.alpha_c * l_c + p.alpha_p * l_p, lora_params, what)
        l_cs.append(l_c.item())
        l_ps.append(l_p.item())
    return l_cs, l_ps
