"""Where the route CCE takes back to the concept does not run: experiments on the erased model.

    python research/cce_routes.py census OUT.json NAME=LORA_DIR ... [--images 160]
        the shapes each model draws from the empty prompt, by both judges ("-": the base model)
    python research/cce_routes.py sweep VARIANT OUT [research/dm2_tradeoff.py's arguments]
        research/dm2_tradeoff.py with one part of DM2 replaced (VARIANT):
        deep_lora: the LoRA on every attention's to_v plus the feed-forward layers and the
            resnets' convolutions (ESD-u's layers), where the defaults adapt to_v only;
        unconditional: circumventing also pulls the empty prompt's prediction on the concept
            images x to the anchor's (as c's), and holds it on the preserved prompts' images;
        unconditional_null_keep: as unconditional, with 0*c and -c held on the preserved
            prompts' images instead of on x.
        cross_attention_v: the LoRA on cross-attention's to_v only (the defaults: every
            attention's, self-attention included, as the paper);
        synonym_init: mining candidate j starts from "a {s} photo" for the concept's j-th world
            synonym (cycled) instead of from the pool prompt.

The variants are experiments, not options of the pipeline: `sweep` swaps dm2's functions for
that one process. research/results/README.md has what they measured.
"""

from __future__ import annotations

import argparse
import json
import runpy
import sys
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dm2.erasure.dark_miner  # noqa: E402
import dm2.erasure.dark_miner_steps  # noqa: E402
from dm2.core.config import load_params, parse_section  # noqa: E402
from dm2.core.io import write_json  # noqa: E402
from dm2.core.params import ModelsParams  # noqa: E402
from dm2.erasure.lora import adapters_disabled, load_lora_into  # noqa: E402
from dm2.judges.registry import Judge, load_judges  # noqa: E402
from dm2.models.diffusion import encode_prompts, generate, load_pipeline, noised, prompt_token_embeddings  # noqa: E402

# to_v of self- and cross-attention (the defaults), the feed-forward layers, the resnets' convs
DEEP_TARGETS = r".*(\.attn[12]\.to_v|\.ff\.net\.(0\.proj|2)|resnets\.\d+\.conv[12])"
VARIANTS = ("deep_lora", "cross_attention_v", "synonym_init", "unconditional", "unconditional_null_keep")


def empty_prompt_census(pipe, judges: dict[str, Judge], concept: str, n: int, seed: int = 123, steps: int = 25) -> dict[str, dict[str, int]]:
    """Per judge, how many of `n` images drawn from the empty prompt (no guidance: the
    model's own prior) it puts in each class of the head that holds `concept`."""
    images = generate(pipe, encode_prompts(pipe, [""]).expand(n, -1, -1), seed, steps, 1.0)
    counts = {}
    for name, judge in judges.items():
        head = next(h for h, classes in judge.classes.items() if concept in classes)
        classes = judge.classes[head]
        found = Counter(classes[i] for i in judge.probs(images)[head].argmax(-1).tolist())
        counts[name] = {c: found.get(c, 0) for c in classes}
    return counts


def unconditional_losses(
    unet,
    scheduler,
    x0: torch.Tensor,
    states: torch.Tensor,
    g: torch.Generator,
    keep: tuple[torch.Tensor, torch.Tensor] | None,
    uncond: torch.Tensor,
    null_on_keep: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`dm2.erasure.dark_miner_steps.circumvent_losses` with the empty prompt (`uncond`, 1 x T x width)
    circumvented too: l_c adds its prediction on x pulled to the original model's for the
    anchor; l_p holds it on the `keep` images at the original's. `null_on_keep`: 0*c and -c
    are held on the `keep` images instead of on x. Each kept condition weighs as one term."""
    if keep is None:
        raise ValueError("circumvent.preserve: the unconditional variants hold the empty prompt on the preserved prompts' images; name some")
    x_t, _, t = noised(scheduler, x0, g)
    b = x0.shape[0]
    x4, t4, s4 = x_t.repeat(4, 1, 1, 1), t.repeat(4), states.repeat_interleave(b, 0)
    with torch.no_grad(), adapters_disabled(unet):
        orig = unet(x4, t4, encoder_hidden_states=s4).sample.split(b)
    new = unet(x4, t4, encoder_hidden_states=s4).sample.split(b)
    new_uncond = unet(x_t, t, encoder_hidden_states=uncond.expand(b, -1, -1)).sample
    l_c = F.mse_loss(new[0], orig[3]) + F.mse_loss(new_uncond, orig[3])
    l_p = F.mse_loss(new[3], orig[3])
    if not null_on_keep:
        l_p = l_p + F.mse_loss(new[1], orig[1]) + F.mse_loss(new[2], orig[2])
    k_t, _, k_step = noised(scheduler, keep[0], g)
    n = k_t.shape[0]
    conds = [keep[1], uncond.expand(n, -1, -1)]
    if null_on_keep:
        conds += [states[1:2].expand(n, -1, -1), states[2:3].expand(n, -1, -1)]
    k_states = torch.cat(conds)
    k_x, k_steps = k_t.repeat(len(conds), 1, 1, 1), k_step.repeat(len(conds))
    with torch.no_grad(), adapters_disabled(unet):
        k_orig = unet(k_x, k_steps, encoder_hidden_states=k_states).sample
    l_p = l_p + len(conds) * F.mse_loss(unet(k_x, k_steps, encoder_hidden_states=k_states).sample, k_orig)
    return l_c, l_p


def apply_variant(variant: str) -> None:
    """Swap the part of DM2 that `variant` replaces, for this process."""
    if variant in ("deep_lora", "cross_attention_v"):
        add_lora, targets = dm2.erasure.dark_miner.add_lora, DEEP_TARGETS if variant == "deep_lora" else ("attn2.to_v",)
        dm2.erasure.dark_miner.add_lora = lambda unet, rank, _=("to_v",), seed=None: add_lora(unet, rank, targets, seed=seed)
        return
    if variant == "synonym_init":
        params = load_params()
        synonyms = params["world"]["synonyms"][params["concept"]["name"]]
        init, mine = dm2.erasure.dark_miner.DarkMiner.__init__, dm2.erasure.dark_miner.mine
        starts: list[torch.Tensor] = []

        def init_from_synonyms(self, pipe, *args, **kwargs) -> None:
            init(self, pipe, *args, **kwargs)
            starts[:] = [prompt_token_embeddings(pipe, f"a {s} photo")[:, 1 : 1 + self.settings.mine.tokens] for s in synonyms]

        def mine_from_synonym(unet, scheduler, latents, _init, encode, p, g, what, max_norm):
            j = int(what.rsplit(" ", 1)[1])  # DarkMiner.loop names candidate j "loop i mine j"
            return mine(unet, scheduler, latents, starts[j % len(starts)], encode, p, g, what, max_norm)

        dm2.erasure.dark_miner.DarkMiner.__init__, dm2.erasure.dark_miner.mine = init_from_synonyms, mine_from_synonym
        return
    if variant not in VARIANTS:
        raise SystemExit(f"variant: {variant!r} is not one of {list(VARIANTS)}")
    uncond: dict[str, torch.Tensor] = {}
    init = dm2.erasure.dark_miner.DarkMiner.__init__

    def init_with_uncond(self, pipe, *args, **kwargs) -> None:
        init(self, pipe, *args, **kwargs)
        uncond["states"] = encode_prompts(pipe, [""])

    dm2.erasure.dark_miner.DarkMiner.__init__ = init_with_uncond
    dm2.erasure.dark_miner_steps.circumvent_losses = lambda unet, scheduler, x0, states, g, keep=None, frozen_on_c=None: unconditional_losses(
        unet, scheduler, x0, states, g, keep, uncond["states"], null_on_keep=variant == "unconditional_null_keep"
    )


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "sweep":
        apply_variant(sys.argv[2])
        sys.argv = [str(Path(__file__).with_name("dm2_tradeoff.py")), *sys.argv[3:]]
        runpy.run_path(sys.argv[0], run_name="__main__")
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["census"])
    parser.add_argument("out", type=Path)
    parser.add_argument("models", nargs="+", metavar="NAME=LORA_DIR")
    parser.add_argument("--images", type=int, default=160)
    args = parser.parse_args()
    params = load_params()
    models = parse_section(ModelsParams, params["models"], "models")
    judges = load_judges(models)
    concept = params["concept"]["name"]
    results = {}
    for item in args.models:
        name, _, lora = item.partition("=")
        pipe = load_pipeline(models.diffusion)
        if lora != "-":
            load_lora_into(pipe, lora)
        results[name] = empty_prompt_census(pipe, judges, concept, args.images)
        print(name, json.dumps(results[name]), flush=True)
    write_json(results, args.out)


if __name__ == "__main__":
    main()
