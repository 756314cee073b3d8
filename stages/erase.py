"""Stage erase: the Dark Miner loops (dm2/erasure/dark_miner.py) until verification fails.

After every loop one checkpoint file is replaced atomically (the commit point); the
embedding pool, the diffusers LoRA and the loop log are exported from it. A killed run
resumes from the last finished loop and ends with the same outputs, because every loop
draws its randomness from (seed, loop index) alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from dm2.core.config import load_params, parse_section, require
from dm2.core.devices import resolve_device
from dm2.core.io import fingerprint, load_tensors, read_metadata, save_tensors, write_json
from dm2.core.params import ConceptParams, ModelsParams
from dm2.core.paths import ERASE_METRICS, ERASE_PLOT, POOL_FILE
from dm2.core.provenance import code_version, weights_hash
from dm2.erasure.dark_miner import DarkMiner, DM2Settings, EraseState
from dm2.erasure.lora import lora_state, restore_lora, save_lora
from dm2.erasure.methods import method_dir, write_method_info
from dm2.erasure.params import CircumventParams, EraseParams, MineParams, VerifyParams
from dm2.models.clip import ClipModel, load_clip
from dm2.models.diffusion import load_pipeline

CHECKPOINT = "checkpoint.safetensors"


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
    except ValueError as e:  # dm2.core.io names the file and the fault
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


def erase(
    pipe: StableDiffusionPipeline,
    clip: ClipModel,
    pool_latents: torch.Tensor,
    pool_images: torch.Tensor,
    settings: DM2Settings,
    out_dir: Path,
    run_id: str,
    concept_prompt: str | None = None,
) -> EraseState:
    """Run (or resume from `out_dir`'s checkpoint, if `run_id` made it) the DM2 loops;
    returns the final state. The LoRA stays in `pipe.unet`."""
    miner = DarkMiner(pipe, clip, pool_latents, pool_images, settings, concept_prompt)  # adds the LoRA
    state = load_checkpoint(out_dir, run_id, pipe.unet) or EraseState(run_id)
    if state.log:
        print(f"erase: resuming after loop {len(state.log)} ({state.stop or 'running'})")

    def commit(state: EraseState) -> None:
        save_checkpoint(state, pipe.unet, out_dir)
        export(state, pipe.unet, out_dir)

    miner.run(state, on_loop=commit)
    export(state, pipe.unet, out_dir)  # heals exports of a run killed between checkpoint and export
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
    settings = DM2Settings(
        parse_section(EraseParams, params["erase"], "erase"),
        parse_section(MineParams, params["mine"], "mine"),
        parse_section(VerifyParams, params["verify"], "verify"),
        parse_section(CircumventParams, params["circumvent"], "circumvent"),
    )
    device = resolve_device(params.get("device", "auto"))
    torch.set_num_threads(settings.erase.cpu_threads)
    pool = read_pool(POOL_FILE, concept.prompt)
    pipe = load_pipeline(models.diffusion, device)
    clip = load_clip(models.clip_name, models.clip_pretrained, device)
    # What the checkpoint may be resumed by: the same params, pool, weights and code.
    run_id = json.dumps(
        {
            "params": fingerprint(models, concept, settings.erase, settings.mine, settings.verify, settings.circumvent),
            "pool": fingerprint(data=pool["latents"]),
            "diffusion weights": weights_hash(pipe.unet, pipe.vae, pipe.text_encoder),
            "CLIP weights": weights_hash(clip.model),
            "code": code_version("stages.erase"),
        },
        sort_keys=True,
    )
    state = erase(pipe, clip, pool["latents"].to(device), pool["images"].to(device), settings, method_dir("dm2"), run_id, concept.prompt)
    write_json(
        {
            "loops": len(state.log),
            "circumvented": len(state.verified),
            "last_s": state.log[-1]["s"],
            "stopped_by": state.stop,
            "seconds": round(sum(r["seconds"] for r in state.log), 1),
        },
        ERASE_METRICS,
    )
    write_json([{"loop": r["loop"], "s": r["s"], "s_after": r["s_after"], "tau": settings.verify.tau} for r in state.log], ERASE_PLOT)


if __name__ == "__main__":
    main()
