"""UCE, Unified Concept Editing (Gandikota et al., WACV 2024), written as a LoRA.

A closed-form edit of the cross-attention key and value projections W: the concept
prompt's token states c_i are sent where W sends the token-aligned anchor states c*_i,
while W keeps its outputs on the preserve prompts' states c_j:

    W' = (sum_i W c*_i c_i^T + sum_j W c_j c_j^T + lam W) (sum_i c_i c_i^T + sum_j c_j c_j^T + lam I)^-1

The delta W' - W is factored by SVD into LoRA factors B A, so the edit saves and loads
like the other erasure LoRAs and the original stays reachable with adapters disabled.
"""

from __future__ import annotations

import torch
from diffusers import StableDiffusionPipeline
from peft.tuners.lora import LoraLayer

from dm2.erasure.lora import CROSS_ATTENTION_KV, add_lora
from dm2.erasure.params import UCEParams
from dm2.models.diffusion import encode_prompts

RANK_RTOL = 1e-6  # singular values below this fraction of the largest count as zero


def uce_delta(w: torch.Tensor, c: torch.Tensor, c_star: torch.Tensor, c_keep: torch.Tensor, lam: float) -> torch.Tensor:
    """W' - W for weight `w` (out x in), edited rows `c` -> `c_star` (n x in each), kept
    rows `c_keep` (m x in). With M = C^T C + P^T P + lam I (rows as vectors), W M cancels
    against the preserve and lam terms, leaving W' - W = W (C* - C)^T C M^-1: computed this
    way its rank is exactly <= n, with no difference of two large W's."""
    w, c, c_star, c_keep = (x.double() for x in (w, c, c_star, c_keep))
    m = c.T @ c + c_keep.T @ c_keep + lam * torch.eye(w.shape[1], dtype=w.dtype)
    rhs = (c_star - c) @ w.T  # n x out: v*_i - W c_i
    # delta = rhs^T C M^-1, solved as M delta^T = C^T rhs (M is symmetric)
    return torch.linalg.solve(m, c.T @ rhs).T


def word_tokens(pipe: StableDiffusionPipeline, prompt: str) -> int:
    """Number of word tokens of `prompt` (without BOS / EOS)."""
    return len(pipe.tokenizer(prompt, truncation=True, max_length=pipe.tokenizer.model_max_length).input_ids) - 2


def edit_pairs(pipe: StableDiffusionPipeline, concept: str, anchor: str) -> tuple[list[int], list[int]]:
    """Token positions of the concept (all but BOS, which no prompt changes) and the
    anchor positions they map to, aligned at the EOS: EOS -> EOS, padding -> padding, the
    last words onto the anchor's last words and concept words with no counterpart onto
    the anchor's first position after BOS."""
    length = pipe.tokenizer.model_max_length
    shift = word_tokens(pipe, anchor) - word_tokens(pipe, concept)
    src = list(range(1, length))
    return src, [min(max(i + shift, 1), length - 1) for i in src]


def lora_factors(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """B (out x rank), A (rank x in) with B A = the best rank-`rank` approximation of delta."""
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    root = s[:rank].sqrt()
    b, a = u[:, :rank] * root, root[:, None] * vh[:rank]
    pad = rank - b.shape[1]  # a delta narrower than the rank: zero columns
    return torch.nn.functional.pad(b, (0, pad)), torch.nn.functional.pad(a, (0, 0, 0, pad))


@torch.no_grad()
def uce(pipe: StableDiffusionPipeline, concept: str, p: UCEParams) -> dict[str, float]:
    """Add the UCE edit of every attn2.to_k / to_v to `pipe.unet` as a LoRA; returns the
    rank used and the largest relative error of the LoRA against the exact delta."""
    states = encode_prompts(pipe, [concept, p.anchor, *p.preserve]).double().cpu()
    src, dst = edit_pairs(pipe, concept, p.anchor)
    c, c_star = states[0, src], states[1, dst]
    c_keep = states[2:, 1:].reshape(-1, states.shape[-1])  # every preserve token but BOS
    layers = {
        name: module
        for name, module in pipe.unet.named_modules()
        if isinstance(module, torch.nn.Linear) and name.endswith(CROSS_ATTENTION_KV)
    }
    deltas = {name: uce_delta(m.weight.cpu(), c, c_star, c_keep, p.lam) for name, m in layers.items()}
    needed = 1
    for d in deltas.values():
        s = torch.linalg.svdvals(d)
        needed = max(needed, int((s > RANK_RTOL * s[0]).sum()) if s[0] > 0 else 1)
    rank = needed if p.lora_rank is None else min(p.lora_rank, needed)
    add_lora(pipe.unet, rank, CROSS_ATTENTION_KV)
    error = 0.0
    for name, d in deltas.items():
        b, a = lora_factors(d, rank)
        lora = pipe.unet.get_submodule(name)
        assert isinstance(lora, LoraLayer)
        weight = lora.lora_A["default"].weight
        lora.lora_A["default"].weight.copy_(a.to(weight))
        lora.lora_B["default"].weight.copy_(b.to(weight))
        error = max(error, float((b @ a - d).norm() / d.norm().clamp_min(1e-30)))
    return {"rank": rank, "edited_tokens": len(src), "lora_error": error}
