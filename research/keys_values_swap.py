"""Which side of the UNet's cross-attention carries a prompt into the image: the keys or
the values? Every cross-attention of the base model takes its keys from one prompt and its
values from another; both judges then say which shape the images show. It reads Table S6
(LoRA on `to_k` / `to_q` against `to_v`) on the world: an adapter can only remove what
passes through the projection it sits on.

    python research/keys_values_swap.py [OUT_DIR]   # default research/results

Writes OUT_DIR/keys_values_swap.{json,png}: per pair, each judge's share of images called
each of the two prompts' shapes; the image rows in the pairs' order, 8 images each.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from diffusers.models.attention_processor import Attention  # noqa: E402

from dm2.core.config import load_params, parse_section  # noqa: E402
from dm2.core.grid import image_grid  # noqa: E402
from dm2.core.io import write_json  # noqa: E402
from dm2.core.params import ModelsParams  # noqa: E402
from dm2.judges.registry import judge_concept, load_judges  # noqa: E402
from dm2.models.diffusion import encode_prompts, initial_noise, latents_to_images, load_pipeline, sample  # noqa: E402

# (keys' prompt, values' prompt): each prompt alone, then swapped; the last pair changes
# colour and background as well as the shape.
PAIRS = [
    ("a red circle on a black background", "a red circle on a black background"),
    ("a red square on a black background", "a red square on a black background"),
    ("a red circle on a black background", "a red square on a black background"),
    ("a red square on a black background", "a red circle on a black background"),
    ("a blue circle on a white background", "a yellow square on a gray background"),
    ("a yellow square on a gray background", "a blue circle on a white background"),
]
IMAGES, STEPS, GUIDANCE, SEED = 16, 25, 5.0, 0


class SwappedValues:
    """Attention processor: when the context is `keys` (the conditional branch's states),
    the values come from `values` instead; every other call is plain attention. Counts the
    swaps, so a diffusers change that passes a copy of the states fails loudly."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        self.keys, self.values, self.swaps = keys, values, 0

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None, **_) -> torch.Tensor:
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        swap = encoder_hidden_states is self.keys
        self.swaps += swap
        b, n, _ = hidden_states.shape

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

        q, k, v = heads(attn.to_q(hidden_states)), heads(attn.to_k(context)), heads(attn.to_v(self.values if swap else context))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, -1)
        return attn.to_out[1](attn.to_out[0](out))


def main(out_dir: Path) -> None:
    models = parse_section(ModelsParams, load_params()["models"], "models")
    pipe = load_pipeline(models.diffusion)
    judges = load_judges(models)
    uncond = encode_prompts(pipe, [""]).expand(IMAGES, -1, -1)
    cross = sum(1 for name, _ in pipe.unet.attn_processors.items() if name.endswith("attn2.processor"))
    rows, shown = [], []
    for key_prompt, value_prompt in PAIRS:
        keys = encode_prompts(pipe, [key_prompt]).expand(IMAGES, -1, -1)
        processor = SwappedValues(keys, encode_prompts(pipe, [value_prompt]).expand(IMAGES, -1, -1))
        pipe.unet.set_attn_processor(processor)
        latents = sample(pipe.unet, pipe.scheduler, keys, uncond, initial_noise(IMAGES, pipe.unet, SEED), STEPS, GUIDANCE, batch_branches=False)
        if processor.swaps != STEPS * cross:
            raise RuntimeError(f"values swapped in {processor.swaps} cross-attention calls, expected {STEPS * cross}")
        images = latents_to_images(pipe.vae, latents)
        shapes = {"keys": key_prompt.split()[2], "values": value_prompt.split()[2]}
        called = {
            j: {side: round(100 * judge_concept(judge, images, shape)[1].float().mean().item(), 1) for side, shape in shapes.items()}
            for j, judge in judges.items()
        }
        rows.append({"keys": key_prompt, "values": value_prompt, "images": IMAGES, "percent_called": called})
        shown.append(images[:8])
        print(f"keys '{key_prompt}', values '{value_prompt}': " + "; ".join(f"{j} {c}" for j, c in called.items()), flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json({"pairs": rows, "steps": STEPS, "guidance": GUIDANCE, "seed": SEED}, out_dir / "keys_values_swap.json")
    labels = [f"K {r['keys'].split()[2]} / V {r['values'].split()[2]}" for r in rows]
    image_grid(shown, labels).save(out_dir / "keys_values_swap.png")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, nargs="?", default=Path("research/results"), help="where the .json and .png go (default: research/results)")
    main(parser.parse_args().out_dir)
