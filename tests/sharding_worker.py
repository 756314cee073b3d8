"""Run by tests/test_sharding.py under torchrun: latents of the shipped world for fixed
prompts, their batches spread over the launched processes and kept as shards.

    torchrun --nproc_per_node 2 tests/sharding_worker.py SHARD_FOLDER OUT_FILE
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dm2.diffusion import encode_prompts, generate_latents, load_pipeline  # noqa: E402
from dm2.io import save_tensors  # noqa: E402
from dm2.sharding import ShardStore, generation_key, process_state  # noqa: E402

PROMPTS = ["a red circle", "a blue square", "a green star", "a photo of a cross", "a yellow triangle"]
SEED, STEPS, GUIDANCE, BATCH = 3, 4, 5.0, 2


def world_latents(shards: ShardStore | None) -> torch.Tensor:
    torch.set_num_threads(1)
    pipe = load_pipeline(str(ROOT / "artifacts/world/sd"))
    cond = encode_prompts(pipe, PROMPTS)
    if shards is not None:
        shards.key = generation_key(pipe.unet, cond, SEED, STEPS, GUIDANCE)
    return generate_latents(pipe, cond, SEED, STEPS, GUIDANCE, batch_size=BATCH, shards=shards)


if __name__ == "__main__":
    latents = world_latents(ShardStore(Path(sys.argv[1]), ""))
    state = process_state()
    if state.is_main_process:
        save_tensors({"latents": latents, "processes": torch.tensor(state.num_processes)}, Path(sys.argv[2]))
