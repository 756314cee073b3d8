"""Run by tests/test_sharding.py as launched processes (`dm2.core.sharding.launch`): latents of
the shipped world for fixed prompts, their batches spread over the processes and kept as
shards. With FAIL_RANK, that process fails at once with a one-line error and the others
wait for it.

    python tests/sharding_worker.py SHARD_FOLDER OUT_FILE [FAIL_RANK]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dm2.core.io import save_tensors  # noqa: E402
from dm2.core.sharding import ShardStore, generation_key, process_state  # noqa: E402
from dm2.models.diffusion import encode_prompts, generate_latents, load_pipeline  # noqa: E402

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
    if len(sys.argv) > 3:
        state = process_state()
        if state.process_index == int(sys.argv[3]):
            raise SystemExit(f"{sys.argv[1]}: not found")
        state.wait_for_everyone()  # never passed: the launcher stops this process
    threads = torch.get_num_threads()
    latents = world_latents(ShardStore(Path(sys.argv[1]), ""))
    state = process_state()
    if state.is_main_process:
        save_tensors({"latents": latents, "processes": torch.tensor(state.num_processes), "threads": torch.tensor(threads)}, Path(sys.argv[2]))
