"""Image generation spread over processes, kept in shards as it finishes.

Under `accelerate launch` (or `torchrun`) every process takes every k-th batch of a
generation (the same batches, noise and seeds as a single process makes, so the images
are the same), writes each finished batch as a shard, and after a barrier every process
reads all shards back in order. Run as plain `python`, the one process makes every batch.

Shards live outside the stage's declared outputs (`dm2.core.paths.SHARDS_DIR`), so a killed run
keeps them and its rerun (by dvc or by hand) makes only the batches still missing. Each
shard records the key of what it was made from (model weights, conditioning, seed,
sampler settings); a shard with another key, or an unreadable one, is made again.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from accelerate import PartialState

from dm2.core.config import InputError
from dm2.core.io import fingerprint, load_tensors, read_metadata, save_tensors
from dm2.core.provenance import weights_hash


def process_state() -> PartialState:
    """This process's place among the launched ones (one, when run as plain python). On a
    machine without CUDA the processes talk over gloo on the CPU."""
    return PartialState(cpu=not torch.cuda.is_available())


Part = tuple[dict[str, torch.Tensor], dict[str, str]]  # a shard's tensors and its text metadata


class ShardStore:
    """Finished parts of one computation, `folder/{i:05d}.safetensors`, each with `key`."""

    def __init__(self, folder: Path, key: str) -> None:
        self.folder, self.key = Path(folder), key

    def path(self, i: int) -> Path:
        return self.folder / f"{i:05d}.safetensors"

    def load(self, i: int) -> Part | None:
        """Part i if a shard of this key holds it, else None (missing, other key, unreadable)."""
        path = self.path(i)
        if not path.is_file():
            return None
        try:
            meta = read_metadata(path)
            if meta.get("key") != self.key:
                return None
            return load_tensors(path), {k: v for k, v in meta.items() if k not in ("key", "process")}
        except InputError:
            return None

    def save(self, i: int, part: Part, process: int = 0) -> None:
        tensors, meta = part
        save_tensors(tensors, self.path(i), {**meta, "key": self.key, "process": str(process)})


def launch(cmd: list[str], n: int) -> int:
    """Run `cmd` as `n` one-thread processes that find each other as torchrun's do (RANK,
    WORLD_SIZE, MASTER_ADDR / MASTER_PORT; gloo on a CPU). Process 0 writes to this
    terminal; the others' output goes to a file, shown only when that process fails. The
    first process to fail stops the others; returns its exit code (0 when all succeed)."""
    with socket.socket() as s:  # a free port for the processes to meet on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = {**os.environ, "WORLD_SIZE": str(n), "LOCAL_WORLD_SIZE": str(n), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        logs = [Path(tmp) / f"process{r}.log" for r in range(n)]
        procs = []
        try:
            for r in range(n):
                env = {**base, "RANK": str(r), "LOCAL_RANK": str(r)}
                if r == 0:
                    procs.append(subprocess.Popen(cmd, env=env))
                else:
                    with logs[r].open("w") as out:
                        procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT))
            while True:
                codes = [p.poll() for p in procs]
                failed = [r for r, c in enumerate(codes) if c not in (None, 0)]
                if failed:
                    r = failed[0]
                    if r > 0:  # its last lines, each as a terminal would leave it after progress bars: the error
                        lines = [line.rsplit("\r", 1)[-1] for line in logs[r].read_text().split("\n")]
                        lines = [line for line in lines if line.strip()][-20:]
                        print(f"process {r} of {n} failed:", *lines, sep="\n", flush=True)
                    return codes[r]
                if all(c == 0 for c in codes):
                    return 0
                time.sleep(0.2)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()


def clear_shards(folder: Path) -> None:
    """Remove a stage's shards once its outputs are written (they are only for resuming)."""
    shutil.rmtree(folder, ignore_errors=True)


def generation_key(unet: torch.nn.Module, cond: torch.Tensor, seed: int, steps: int, guidance: float, guide_key: str | None = None) -> str:
    """What a generation's images are made from: the UNet's weights (with any adapter), the
    conditioning, the seed, the sampler settings and the sampling-time guidance, if any."""
    return fingerprint(weights_hash(unet), seed, steps, guidance, guide_key, data=cond)


def run_parts(n: int, make: Callable[[int], Part], store: ShardStore | None, what: str = "parts") -> list[Part]:
    """`make(i)` for i in range(n), in order. With several processes, process r makes the
    parts i with i % processes == r, and every process returns all of them, read back from
    `store`. Parts `store` already holds are not made again. Without a store, this one
    process makes every part."""
    if store is None:
        return [make(i) for i in range(n)]
    state = process_state()
    made = reused = 0
    for i in range(state.process_index, n, state.num_processes):
        if store.load(i) is None:
            store.save(i, make(i), state.process_index)
            made += 1
        else:
            reused += 1
    if reused:
        print(f"{what}: process {state.process_index} reused {reused} finished shard(s) of {store.folder}, made {made}")
    state.wait_for_everyone()
    parts = [store.load(i) for i in range(n)]
    missing = [i for i, part in enumerate(parts) if part is None]
    if missing:
        raise InputError(f"{store.folder}: shards {missing} are missing or unreadable after every process finished; rerun")
    return parts


def run_batches(n_batches: int, make: Callable[[int], torch.Tensor], store: ShardStore, what: str = "batches") -> torch.Tensor:
    """`run_parts` for tensor batches, concatenated in order."""
    parts = run_parts(n_batches, lambda i: ({"batch": make(i)}, {}), store, what)
    return torch.cat([tensors["batch"] for tensors, _ in parts])
