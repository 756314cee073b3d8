"""Stage erase: Dark Miner loops (mine -> verify -> circumvent) until verification fails.

After every loop one checkpoint file is replaced atomically (the commit point); the
embedding pool, the diffusers LoRA and the loop log are exported from it. A killed run
resumes from the last finished loop and ends with the same outputs, because every loop
draws its randomness from (seed, loop index) alone.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionPipeline
from tqdm import tqdm

from dm2.clip import ClipModel, load_clip
from dm2.config import load_params, parse_section, require
from dm2.dark_miner import (
    circumvent,
    circumvent_states,
    delta_cosine,
    mine,
    pick_target,
)
from dm2.diffusion import (
    encode_prompts,
    free_embedding_states,
    generate,
    generate_latents,
    load_pipeline,
    prompt_token_embeddings,
)
from dm2.io import fingerprint, load_tensors, read_metadata, save_tensors, write_json
from dm2.lora import (
    adapters_disabled,
    add_lora,
    frozen,
    lora_state,
    restore_lora,
    save_lora,
)
from dm2.methods import method_dir, write_method_info
from dm2.models import resolve_device
from dm2.params import (
    CircumventParams,
    ConceptParams,
    EraseParams,
    MineParams,
    ModelsParams,
    VerifyParams,
)
from dm2.provenance import code_version, weights_hash

POOL_FILE = Path("data/pool/latents.safetensors")
OUT_DIR = method_dir("dm2")
METRICS = Path("metrics/erase.json")
PLOT = Path("plots/erase_s.json")
CHECKPOINT = "checkpoint.safetensors"


@dataclass
class EraseState:
    """Everything a finished loop leaves behind; saved whole after every loop."""

    fingerprint: str
    embeddings: list[torch.Tensor] = field(default_factory=list)  # mined c, one per loop
    originals: dict[int, torch.Tensor] = field(default_factory=dict)  # x from theta'(c), per verified loop
    log: list[dict[str, Any]] = field(default_factory=list)
    stop: str = ""  # "", "verification" or "max_loops"

    @property
    def verified(self) -> list[int]:
        return [i for i, row in enumerate(self.log) if row["circumvented"]]


def save_checkpoint(state: EraseState, unet: torch.nn.Module, out_dir: Path) -> None:
    tensors = {f"lora.{k}": v for k, v in lora_state(unet).items()}
    tensors.update({f"c_{i:03d}": c for i, c in enumerate(state.embeddings)})
    tensors.update({f"x_{i:03d}": x for i, x in state.originals.items()})
    meta = {"fingerprint": state.fingerprint, "log": json.dumps(state.log), "stop": state.stop}
    save_tensors(tensors, out_dir / CHECKPOINT, meta)


def _what_differs(saved: str, expected: str) -> str:
    """The parts of two run ids (JSON mappings, as `main` makes them) that differ."""
    try:
        a, b = json.loads(saved), json.loads(expected)
        return ", ".join(k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
    except (json.JSONDecodeError, AttributeError):
        return "settings"


def load_checkpoint(out_dir: Path, expected: str, unet: torch.nn.Module) -> EraseState | None:
    """The saved state if it belongs to this run (same fingerprint: params, pool, weights and
    code), else None; an unreadable checkpoint is reported and set aside the same way."""
    path = out_dir / CHECKPOINT
    if not path.is_file():
        return None
    try:
        meta = read_metadata(path)
        if meta.get("fingerprint") != expected:
            print(f"erase: {path} was made by other {_what_differs(meta.get('fingerprint', ''), expected)}; starting afresh")
            return None
        tensors = load_tensors(path)
    except ValueError as e:  # dm2.io names the file and the fault
        print(f"erase: {e}; starting afresh")
        return None
    state = EraseState(expected, log=json.loads(meta["log"]), stop=meta["stop"])
    state.embeddings = [tensors[f"c_{i:03d}"] for i in range(len(state.log))]
    state.originals = {i: tensors[f"x_{i:03d}"] for i in state.verified}
    restore_lora(unet, {k[len("lora."):]: v for k, v in tensors.items() if k.startswith("lora.")})
    return state


def export(state: EraseState, unet: torch.nn.Module, out_dir: Path) -> None:
    """The user-facing outputs, all derived from the checkpoint."""
    save_lora(unet, out_dir)
    meta = {f"s_{i:03d}": f"{row['s']:.6f}" for i, row in enumerate(state.log)}
    save_tensors({f"c_{i:03d}": c for i, c in enumerate(state.embeddings)}, out_dir / "embeddings.safetensors", meta)
    write_json({"loops": state.log, "stop": state.stop}, out_dir / "loop_log.json")
    write_method_info(out_dir, "dm2", loops=len(state.log), stop=state.stop)


def verification_score(
    pipe: StableDiffusionPipeline, clip: ClipModel, cond: torch.Tensor, reference: torch.Tensor, f_e: torch.Tensor, v: VerifyParams
) -> float:
    """s(c) of the current model: `v.samples` images x_c from `cond`, against the mean
    feature of `v.references` images x_r from the `reference` states (both from seed `v.seed` on)."""
    with frozen(pipe.unet):
        x_c = generate(pipe, cond.expand(v.samples, -1, -1), v.seed, v.steps, v.guidance)
        x_r = generate(pipe, reference.expand(v.references, -1, -1), v.seed, v.steps, v.guidance)
    return delta_cosine(clip.encode_images(x_c), clip.encode_images(x_r), f_e)


def erase(
    pipe: StableDiffusionPipeline,
    clip: ClipModel,
    pool_latents: torch.Tensor,
    pool_images: torch.Tensor,
    e: EraseParams,
    m: MineParams,
    v: VerifyParams,
    cp: CircumventParams,
    out_dir: Path,
    run_id: str,
    concept_prompt: str | None = None,
) -> EraseState:
    """Run (or resume) the DM2 loops; returns the final state. The LoRA stays in `pipe.unet`.
    `concept_prompt` (the pool's prompt) is where mining starts when `m.init` is "concept"."""
    require(len(pool_latents) >= m.k, "pool.size", f"the pool has {len(pool_latents)} images, mining needs k = {m.k}")
    unet, scheduler = pipe.unet, pipe.scheduler
    torch.manual_seed(e.seed)  # peft draws the initial LoRA A factors from the global RNG
    lora_params = add_lora(unet, e.lora_rank)
    state = load_checkpoint(out_dir, run_id, unet) or EraseState(run_id)
    if state.log:
        print(f"erase: resuming after loop {len(state.log)} ({state.stop or 'running'})")
    anchor = encode_prompts(pipe, [cp.anchor])  # c0's states
    reference = encode_prompts(pipe, [v.reference_prompt])  # x_r's
    # c starts as a prompt's own token embeddings (after BOS), so it first means that prompt
    if m.init == "concept":
        require(bool(concept_prompt), "mine.init", "is 'concept' but no concept prompt was given")
    init = prompt_token_embeddings(pipe, concept_prompt if m.init == "concept" else cp.anchor)[:, 1 : 1 + m.tokens]

    vocab_norm = pipe.text_encoder.get_input_embeddings().weight.norm(dim=-1).max().item()
    max_norm = None if m.norm_bound is None else m.norm_bound * vocab_norm

    def encode(c: torch.Tensor) -> torch.Tensor:
        return free_embedding_states(pipe, c)
    f_pool = clip.encode_images(pool_images)
    keep = None
    if cp.preserve:
        # Made once by the original model, from a seed of their own: the same on resume
        keep_states = encode_prompts(pipe, [q for q in cp.preserve for _ in range(cp.preserve_images)])
        with adapters_disabled(unet), frozen(unet):
            keep = (generate_latents(pipe, keep_states, e.seed * 1_000_003 - 1, cp.steps, cp.guidance), keep_states)

    bar = tqdm(total=e.max_loops, initial=len(state.log), desc="loops")
    while not state.stop:
        i = len(state.log)
        start = time.time()
        g = torch.Generator().manual_seed(e.seed * 1_000_003 + i)
        mined = []  # (s, c, mining losses, pool images) per candidate
        for j in range(m.candidates):
            picked = torch.randperm(len(pool_latents), generator=g)[: m.k]
            with frozen(unet):
                c, mine_losses = mine(unet, scheduler, pool_latents[picked], init, encode, m, g, f"loop {i} mine {j}", max_norm)
            mined.append((verification_score(pipe, clip, encode(c), reference, f_pool[picked], v), c, mine_losses, picked))
        s, c, mine_losses, picked = max(mined, key=lambda candidate: candidate[0])
        row = {"loop": i, "s": s, "mine_loss": mine_losses[-1], "circumvented": s > v.tau, "replayed": None, "l_c": None, "l_p": None, "s_after": None}
        if m.candidates > 1:
            row["s_candidates"] = [candidate[0] for candidate in mined]
        state.embeddings.append(c)
        if s > v.tau:
            with adapters_disabled(unet), frozen(unet):
                state.originals[i] = generate_latents(pipe, encode(c).expand(cp.images, -1, -1), e.seed * 1_000_003 + i, cp.steps, cp.guidance)
            # This loop's c first, then the earlier verified ones, for pick_target
            order = [i] + state.verified
            if cp.replay == "loop":
                order = [order[pick_target(len(order), cp.r, g)]]
            targets = [(state.originals[j], circumvent_states(state.embeddings[j], anchor, encode)) for j in order]
            l_c, l_p = circumvent(unet, scheduler, lora_params, targets, cp, g, f"loop {i} circumvent", keep)
            row.update(replayed=order, l_c=sum(l_c[-10:]) / len(l_c[-10:]), l_p=sum(l_p[-10:]) / len(l_p[-10:]))
            # The same c verified again on the circumvented model (paper Fig. S1, before / after)
            row["s_after"] = verification_score(pipe, clip, encode(c), reference, f_pool[picked], v)
        row["seconds"] = round(time.time() - start, 2)
        state.log.append(row)
        if s <= v.tau:
            state.stop = "verification"
        elif len(state.log) >= e.max_loops:
            state.stop = "max_loops"
        save_checkpoint(state, unet, out_dir)
        export(state, unet, out_dir)
        bar.update(1)
        summary = f"loop {i}: s(c)={s:.3f} (tau {v.tau})"
        summary += (
            f", circumvented c_{'/'.join(map(str, row['replayed']))}, l_c={row['l_c']:.4f}, l_p={row['l_p']:.4f}, s(c) after={row['s_after']:.3f}"
            if row["circumvented"]
            else ", stop"
        )
        tqdm.write(summary + f", {row['seconds']:.1f}s")
    bar.close()
    export(state, unet, out_dir)  # heals exports of a run killed between checkpoint and export
    return state


def read_pool(path: Path, prompt: str) -> dict[str, torch.Tensor]:
    """The image pool, refused unless it holds images of `prompt` (the concept's)."""
    pool = load_tensors(path)
    require(pool["latents"].shape[0] > 0, str(path), "the image pool is empty; run the pool stage")
    made_from = read_metadata(path).get("prompt")
    require(made_from == prompt, str(path), f"was made from {made_from!r}, not {prompt!r}; run the pool stage")
    return pool


def main() -> None:
    params = load_params()
    models = parse_section(ModelsParams, params["models"], "models")
    concept = parse_section(ConceptParams, params["concept"], "concept")
    e = parse_section(EraseParams, params["erase"], "erase")
    m = parse_section(MineParams, params["mine"], "mine")
    v = parse_section(VerifyParams, params["verify"], "verify")
    cp = parse_section(CircumventParams, params["circumvent"], "circumvent")
    device = resolve_device(params.get("device", "auto"))
    torch.set_num_threads(e.cpu_threads)
    pool = read_pool(POOL_FILE, concept.prompt)
    pipe = load_pipeline(models.diffusion, device)
    clip = load_clip(models.clip_name, models.clip_pretrained, device)
    # What the checkpoint may be resumed by: the same params, pool, weights and code.
    run_id = json.dumps(
        {
            "params": fingerprint(models, concept, e, m, v, cp),
            "pool": fingerprint(data=pool["latents"]),
            "diffusion weights": weights_hash(pipe.unet, pipe.vae, pipe.text_encoder),
            "CLIP weights": weights_hash(clip.model),
            "code": code_version("stages.erase"),
        },
        sort_keys=True,
    )
    state = erase(pipe, clip, pool["latents"].to(device), pool["images"].to(device), e, m, v, cp, OUT_DIR, run_id, concept.prompt)
    write_json(
        {
            "loops": len(state.log),
            "circumvented": len(state.verified),
            "last_s": state.log[-1]["s"],
            "stopped_by": state.stop,
            "seconds": round(sum(r["seconds"] for r in state.log), 1),
        },
        METRICS,
    )
    write_json([{"loop": r["loop"], "s": r["s"], "s_after": r["s_after"], "tau": v.tau} for r in state.log], PLOT)


if __name__ == "__main__":
    main()
