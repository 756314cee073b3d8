"""LoRA adapters on the UNet (DM2: the value projections; the baselines: the target sets
below), through peft / diffusers' adapter API.

The original model (theta' in the paper) is the same UNet with its adapters disabled, so
no second copy of the UNet is ever held in memory."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

LORA_FILE = "pytorch_lora_weights.safetensors"

Targets = tuple[str, ...] | str  # module-name suffixes, or one peft regex (full match)

# The cross-attention projections (ESD-x, learnable prompts' model update).
CROSS_ATTENTION: Targets = ("attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")
# The cross-attention key / value projections: the only layers that see the text (UCE).
CROSS_ATTENTION_KV: Targets = ("attn2.to_k", "attn2.to_v")
# Everything but cross-attention (ESD-u): self-attention, feed-forward, the transformer
# blocks' in / out projections and the resnets' convolutions.
NON_CROSS_ATTENTION: Targets = (
    r".*(\.attn1\.(to_q|to_k|to_v|to_out\.0)|\.ff\.net\.(0\.proj|2)|attentions\.\d+\.proj_(in|out)|resnets\.\d+\.conv[12])"
)


def add_lora(unet: UNet2DConditionModel, rank: int, targets: Targets = ("to_v",), seed: int | None = None) -> list[torch.nn.Parameter]:
    """Insert rank-`rank` LoRA into the modules `targets` selects (a tuple of name suffixes:
    the default `to_v` hits self- and cross-attention alike; a string: a peft regex matched
    against full module names) and return the trainable adapter parameters.
    B starts at zero, so the adapted UNet initially equals the original. `seed`: seeds the
    global RNG first, from which peft draws the initial A factors."""
    if seed is not None:
        torch.manual_seed(seed)
    unet.requires_grad_(False)
    target_modules = targets if isinstance(targets, str) else list(targets)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=True, target_modules=target_modules))
    params = [p for n, p in unet.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    if not params:
        raise ValueError(f"lora: no module of the UNet matches {target_modules}")
    return params


@contextmanager
def adapters_disabled(unet: UNet2DConditionModel) -> Iterator[None]:
    """Run the original model (theta') inside the block: the UNet itself while it has no adapter yet."""
    if not getattr(unet, "_hf_peft_config_loaded", False):
        yield
        return
    unet.disable_adapters()
    try:
        yield
    finally:
        unet.enable_adapters()


def lora_state(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """The adapter weights in diffusers' LoRA format (what `load_lora_weights` reads)."""
    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    # diffusers renames only attention projections to lora.down / up, and its loader guesses
    # the format from the first key, so a mixed dict (feed-forward, convs) would lose half
    return {k.replace(".lora_A.", ".lora.down.").replace(".lora_B.", ".lora.up."): v for k, v in state.items()}


def save_lora(unet: UNet2DConditionModel, out_dir: str | Path) -> None:
    """Write `pytorch_lora_weights.safetensors` loadable by `StableDiffusionPipeline.load_lora_weights`."""
    StableDiffusionPipeline.save_lora_weights(
        save_directory=str(out_dir), unet_lora_layers=lora_state(unet), safe_serialization=True
    )


def restore_lora(unet: UNet2DConditionModel, state: dict[str, torch.Tensor]) -> None:
    """Put adapter weights in `lora_state` format back into a UNet that has the adapter
    (used to resume an interrupted erase run)."""
    # diffusers names the LoRA factors lora.down / lora.up; peft calls them lora_A / lora_B.
    peft_state = {
        k.replace("lora.down.weight", "lora_A.weight").replace("lora.up.weight", "lora_B.weight"): v
        for k, v in state.items()
    }
    result = set_peft_model_state_dict(unet, peft_state)
    if result.unexpected_keys:
        raise ValueError(f"LoRA keys do not fit this UNet: {result.unexpected_keys[:3]}")


def load_lora_into(pipe: StableDiffusionPipeline, lora_dir: str | Path) -> None:
    """Apply an erasure LoRA to a pipeline with diffusers' own loader."""
    path = Path(lora_dir) / LORA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: LoRA weights not found")
    pipe.load_lora_weights(str(lora_dir), weight_name=LORA_FILE)


@contextmanager
def frozen(module: torch.nn.Module) -> Iterator[None]:
    """Stop gradients into every parameter of `module` inside the block (the mining step
    trains only the embedding), restoring the previous flags after."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
