"""The CLIP used to verify erasure and to compute CLIP scores, one interface for the
shapes world's tiny CLIP ("world-clip", trained by stages/train_clip.py) and real
open_clip models (e.g. "ViT-L-14" / "openai")."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import open_clip
import torch
import torch.nn.functional as F

from dm2.core.config import InputError
from dm2.core.params import is_local_path
from dm2.core.precision import full_precision
from dm2.core.weights import load_float32, save_float16

WORLD_CLIP = "world-clip"
# dm2/models/world-clip.json: 64-d embeddings, CLIP's text tower at width 32 (SD's tokenizer ids,
# 49408-token vocabulary) and OpenAI's ModifiedResNet vision tower at width 12. A ViT
# (patch 4, width 128) learned shape far too slowly from scratch on CPU: zero-shot shape
# stayed at chance after 1000 contrastive steps, where this ResNet reaches 100% in 2000.
# Registered at import so open_clip.create_model / get_tokenizer know the world's CLIP.
open_clip.add_model_config(Path(__file__).with_name(f"{WORLD_CLIP}.json"))


def create_world_clip() -> open_clip.CLIP:
    """A randomly initialised world CLIP (built directly: the factory would warn that no
    pretrained weights were loaded)."""
    return open_clip.CLIP(**open_clip.get_model_config(WORLD_CLIP))


def preprocess(images: torch.Tensor, size: tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """open_clip's eval transform on tensors: resize the shortest side, centre crop, normalise."""
    h, w = images.shape[-2:]
    if (h, w) != tuple(size):
        scale = max(size[0] / h, size[1] / w)
        nh, nw = max(size[0], round(h * scale)), max(size[1], round(w * scale))
        images = F.interpolate(images, (nh, nw), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        top, left = (nh - size[0]) // 2, (nw - size[1]) // 2
        images = images[..., top : top + size[0], left : left + size[1]]
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean_t) / std_t


def model_preprocess(model: open_clip.CLIP) -> tuple[tuple[int, int], tuple[float, ...], tuple[float, ...]]:
    """(size, mean, std) of `model`; OpenAI CLIP's statistics unless the model sets its own."""
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg.get("size", model.visual.image_size)
    size = (size, size) if isinstance(size, int) else tuple(size)
    return size, tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)), tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))


@dataclass
class ClipModel:
    model: open_clip.CLIP
    tokenizer: Callable[[list[str]], torch.Tensor]
    device: torch.device
    batch_size: int = 64  # chunk size, so a ViT-L does not see hundreds of 224px images at once

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp())

    @torch.no_grad()
    @full_precision
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised features (on CPU) of images in [0, 1], N x 3 x H x W of any size."""
        size, mean, std = model_preprocess(self.model)
        out = []
        for chunk in images.split(self.batch_size):
            x = preprocess(chunk.to(self.device, torch.float32), size, mean, std)
            out.append(F.normalize(self.model.encode_image(x).float(), dim=-1).cpu())
        return torch.cat(out)

    @torch.no_grad()
    @full_precision
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised features (on CPU) of `texts`."""
        out = []
        for i in range(0, len(texts), self.batch_size):
            ids = self.tokenizer(texts[i : i + self.batch_size]).to(self.device)
            out.append(F.normalize(self.model.encode_text(ids).float(), dim=-1).cpu())
        return torch.cat(out)


def save_world_clip(model: open_clip.CLIP, path: str | Path) -> None:
    """Stored as float16 to keep the shipped world small; `load_clip` casts back to float32."""
    save_float16(model.state_dict(), path, metadata={"model": WORLD_CLIP})


def load_clip(name: str, pretrained: str, device: str = "cpu") -> ClipModel:
    """`name` "world-clip" with `pretrained` a local safetensors path, or any open_clip model
    name with its pretrained tag or checkpoint (e.g. "ViT-L-14", "openai")."""
    local = is_local_path(pretrained)
    if local and not pretrained.endswith(".safetensors"):
        raise InputError(f"models.clip_pretrained: {pretrained}: weights load as safetensors only (never unpickled); convert it to .safetensors")
    try:
        if name == WORLD_CLIP:
            model = create_world_clip()
            model.load_state_dict(load_float32(pretrained))
        else:
            if local and not Path(pretrained).expanduser().is_file():
                raise FileNotFoundError(f"models.clip_pretrained: {pretrained} does not exist")
            model = open_clip.create_model(name, pretrained=pretrained)
    except RuntimeError as e:  # load_state_dict: missing, unexpected or mis-shaped keys
        first = str(e).strip().splitlines()[1 if "\n" in str(e).strip() else 0].strip()[:200]
        raise InputError(f"models.clip_pretrained: {pretrained} does not hold open_clip {name!r} weights ({first}); check models.clip_name") from None
    model = model.to(device).eval().requires_grad_(False)
    return ClipModel(model, open_clip.get_tokenizer(name), torch.device(device))


def clip_score(clip: ClipModel, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """Per-image CLIP score: 100 * max(cos(image, its prompt), 0)."""
    if len(images) != len(prompts):
        raise ValueError(f"clip_score: {len(images)} images but {len(prompts)} prompts")
    cos = (clip.encode_images(images) * clip.encode_texts(prompts)).sum(-1)
    return 100 * cos.clamp_min(0)


def zero_shot(clip: ClipModel, images: torch.Tensor, class_prompts: list[str]) -> torch.Tensor:
    """Index of the prompt in `class_prompts` most similar to each image."""
    return (clip.encode_images(images) @ clip.encode_texts(class_prompts).T).argmax(-1)
