"""What the attacks share: their result, restart seeds, token sequences, the text encoder's
states, the original model and the denoising loss.

"The attacked model" is `pipe.unet` as it is; the original model is the same UNet with
its adapters disabled, or the UNet itself when it has none (`original_model`).
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Callable

import torch
from diffusers import DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from dm2.core.config import require
from dm2.erasure.lora import adapters_disabled
from dm2.models.diffusion import noised


@dataclass
class AttackResult:
    """What an attack found: readable prompts, the states to generate their images from,
    and what to save beside them."""

    prompts: list[str]
    cond: torch.Tensor  # N x 77 x width text-encoder states, one image per prompt
    columns: dict[str, list] = field(default_factory=dict)  # extra CSV columns, one value per prompt
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # learned embeddings etc.
    log: dict[str, list] = field(default_factory=dict)  # objective per step


# Called by an attack with each budget's result, in budget order; returns the prompts
# (bool, one per prompt) attacked by every judge so far, which need no further search.
BudgetJudge = Callable[[AttackResult], torch.Tensor]


def pack_results(results: list[AttackResult], prefix: str = "") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Results (one per budget) as safetensors tensors and text metadata, exactly: for
    shards (`dm2.core.sharding`) that carry them between processes and across a killed run."""
    tensors = {}
    for b, r in enumerate(results):
        tensors[f"{prefix}{b}/cond"] = r.cond.clone()
        tensors.update({f"{prefix}{b}/tensors/{k}": v.clone() for k, v in r.tensors.items()})  # results share some (safetensors refuses)
    meta = [{"prompts": r.prompts, "columns": list(r.columns.items()), "tensors": list(r.tensors), "log": r.log} for r in results]
    return tensors, {f"{prefix}results": json.dumps(meta)}


def unpack_results(tensors: dict[str, torch.Tensor], meta: dict[str, str], prefix: str = "") -> list[AttackResult]:
    """What `pack_results` packed."""
    return [
        AttackResult(m["prompts"], tensors[f"{prefix}{b}/cond"], dict(m["columns"]),
                     {k: tensors[f"{prefix}{b}/tensors/{k}"] for k in m["tensors"]}, m["log"])
        for b, m in enumerate(json.loads(meta[f"{prefix}results"]))
    ]  # fmt: skip


@dataclass
class AttackInputs:
    """What every attacked model shares, made from the base model before any method is
    applied: the attacked prompts, the base images P4D / UnlearnDiff start from (and their
    starting noise), CCE's inversion set, and Ring-A-Bell's results per restart (text
    encoder only, so valid for any UNet)."""

    prompts: list[str]
    x0: torch.Tensor
    noise: torch.Tensor
    concept_latents: torch.Tensor
    ring: list[list[AttackResult]]  # per restart, per budget
    allowed: torch.Tensor
    seconds: dict[str, float]


def restart_seed(seed: int, restart: int) -> int:
    """The seed of one restart of an attack: restart 0 keeps the attack's own seed."""
    return seed + 7919 * restart


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


def fixed_sequences(tokenizer: CLIPTokenizer, tokens: torch.Tensor) -> torch.Tensor:
    """`full_sequences` for M x K token ids, vectorised (the genetic search builds thousands)."""
    m, k = tokens.shape
    ids = torch.full((m, tokenizer.model_max_length), tokenizer.pad_token_id, dtype=torch.long)
    ids[:, 0] = tokenizer.bos_token_id
    ids[:, 1 : k + 1] = tokens
    ids[:, k + 1] = tokenizer.eos_token_id
    return ids


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


def decode(tokenizer: CLIPTokenizer, ids: torch.Tensor) -> list[str]:
    return [tokenizer.decode(row.tolist(), skip_special_tokens=True) for row in ids]


def id_strings(tokenizer: CLIPTokenizer, ids: torch.Tensor) -> list[str]:
    """The non-special ids of each sequence, space-separated (exact where decoded text is not)."""
    special = torch.tensor(tokenizer.all_special_ids)
    return [" ".join(str(i) for i in row[~torch.isin(row, special)].tolist()) for row in ids]


@torch.no_grad()
def states(text_encoder: CLIPTextModel, ids: torch.Tensor) -> torch.Tensor:
    """The text encoder's states for token ids (N x 77)."""
    return text_encoder(ids.to(text_encoder.device))[0].to(text_encoder.dtype)


def original_model(unet: UNet2DConditionModel) -> AbstractContextManager[None]:
    """The original model theta': the erased UNet with its adapters disabled, or the UNet
    itself when it carries none (the base model attacked)."""
    return adapters_disabled(unet) if getattr(unet, "peft_config", None) else nullcontext()


def chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def noised_rows(
    scheduler: DDIMScheduler, x0: torch.Tensor, g: torch.Generator, rows: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`noised` drawn for every sample of `x0`, then kept for `rows` (None: all), so the
    samples kept get the noise they would get beside the others."""
    x_t, noise, t = noised(scheduler, x0, g)
    return (x_t, noise, t) if rows is None else (x_t[rows], noise[rows], t[rows])


def denoising_loss(
    unet: UNet2DConditionModel,
    scheduler: DDIMScheduler,
    x0: torch.Tensor,
    states: torch.Tensor,
    g: torch.Generator,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per sequence: || eps - eps_attacked(x_t | states) ||^2 (UnlearnDiff, textual
    inversion); `states` are those of `rows` of `x0` (None: all)."""
    x_t, noise, t = noised_rows(scheduler, x0, g, rows)
    return (unet(x_t, t, encoder_hidden_states=states).sample - noise).pow(2).mean(dim=(1, 2, 3))
