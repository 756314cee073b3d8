"""Generation in shards (dm2.core.sharding): the same latents as without, finished batches
reused, shards of other settings or unreadable ones made again, and two launched CPU
processes (gloo) splitting the batches and giving the same latents as one."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import dm2.models.diffusion as diffusion
from dm2.core.io import load_tensors, read_metadata
from dm2.core.sharding import ShardStore, generation_key, launch
from dm2.models.diffusion import encode_prompts, generate_latents

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a red circle", "a blue ball", "a green disk", "a star", "a photo"]


def counting(monkeypatch) -> list[int]:
    made = []
    original = diffusion.sample

    def sample(unet, scheduler, cond, *args, **kw):
        made.append(cond.shape[0])
        return original(unet, scheduler, cond, *args, **kw)

    monkeypatch.setattr(diffusion, "sample", sample)
    return made


def test_shards_give_the_same_latents_and_finished_ones_are_reused(tiny_pipe, tmp_path, monkeypatch, capsys):
    cond = encode_prompts(tiny_pipe, PROMPTS)
    plain = generate_latents(tiny_pipe, cond, 1, 3, 4.0, batch_size=2)
    key = generation_key(tiny_pipe.unet, cond, 1, 3, 4.0)
    store = ShardStore(tmp_path / "shards", key)
    assert torch.equal(generate_latents(tiny_pipe, cond, 1, 3, 4.0, batch_size=2, shards=store), plain)
    assert sorted(p.name for p in store.folder.iterdir()) == ["00000.safetensors", "00001.safetensors", "00002.safetensors"]

    made = counting(monkeypatch)
    assert torch.equal(generate_latents(tiny_pipe, cond, 1, 3, 4.0, batch_size=2, shards=store), plain)
    assert made == [] and "reused 3 finished shard(s)" in capsys.readouterr().out

    store.path(1).unlink()  # killed before batch 1 was written
    store.path(2).write_bytes(b"\x00garbage")  # or while writing it
    assert torch.equal(generate_latents(tiny_pipe, cond, 1, 3, 4.0, batch_size=2, shards=store), plain)
    assert made == [2, 1]  # batches 1 and 2 only (2 and 1 prompts)


def test_shards_of_other_settings_are_made_again(tiny_pipe, tmp_path, monkeypatch):
    cond = encode_prompts(tiny_pipe, PROMPTS)
    folder = tmp_path / "shards"
    generate_latents(tiny_pipe, cond, 1, 3, 4.0, batch_size=2, shards=ShardStore(folder, generation_key(tiny_pipe.unet, cond, 1, 3, 4.0)))
    other = generation_key(tiny_pipe.unet, cond, 2, 3, 4.0)  # another seed
    assert other != generation_key(tiny_pipe.unet, cond, 1, 3, 4.0)
    made = counting(monkeypatch)
    latents = generate_latents(tiny_pipe, cond, 2, 3, 4.0, batch_size=2, shards=ShardStore(folder, other))
    assert made == [2, 2, 1]
    assert torch.equal(latents, generate_latents(tiny_pipe, cond, 2, 3, 4.0, batch_size=2))
    assert all(read_metadata(p)["key"] == other for p in folder.iterdir())


def test_the_key_follows_the_weights_and_the_guidance(tiny_pipe):
    cond = encode_prompts(tiny_pipe, PROMPTS)
    key = generation_key(tiny_pipe.unet, cond, 1, 3, 4.0)
    assert generation_key(tiny_pipe.unet, cond, 1, 3, 4.0, "sld settings") != key
    with torch.no_grad():
        tiny_pipe.unet.conv_in.bias[0] += 1e-3
    assert generation_key(tiny_pipe.unet, cond, 1, 3, 4.0) != key


def test_two_launched_processes_split_the_batches_and_give_the_same_latents(tmp_path):
    cmd = [sys.executable, str(ROOT / "tests" / "sharding_worker.py"), str(tmp_path / "shards"), str(tmp_path / "out.safetensors")]
    assert launch(cmd, 2) == 0
    two = load_tensors(tmp_path / "out.safetensors")
    assert int(two["processes"]) == 2 and int(two["threads"]) == 1
    makers = {read_metadata(p)["process"] for p in (tmp_path / "shards").iterdir()}
    assert makers == {"0", "1"}  # both processes made batches (3 batches: 0 and 2 by one, 1 by the other)

    sys.path.insert(0, str(ROOT / "tests"))
    from sharding_worker import world_latents

    threads = torch.get_num_threads()
    try:
        one = world_latents(None)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(two["latents"], one)


def test_a_failing_process_stops_the_others_and_shows_its_error(tmp_path, capfd):
    cmd = [sys.executable, str(ROOT / "tests" / "sharding_worker.py"), str(tmp_path / "missing"), str(tmp_path / "out"), "1"]
    start = time.time()
    assert launch(cmd, 2) == 1
    assert time.time() - start < 60  # process 0 waited for process 1 at a barrier: stopped, not left hanging
    lines = capfd.readouterr().out.strip().splitlines()
    assert lines[-2:] == ["process 1 of 2 failed:", f"{tmp_path / 'missing'}: not found"]
    assert not (tmp_path / "out").exists()


def test_stages_that_run_in_one_process_refuse_several(tmp_path):
    env = {**os.environ, "WORLD_SIZE": "2", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "stages", "erase"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == ["erase: runs in one process, not 2; of the stages only pool, evaluate, attack, compare spread over processes"]


def test_attack_restarts_in_shards_match_and_are_reused(tiny_pipe, tmp_path, monkeypatch, capsys):
    """The sweep with its restarts kept as shards gives the same curves, images and files
    as without, and a rerun makes no restart again (Ring-A-Bell's search included)."""
    from dataclasses import replace

    import dm2.attacks.ring_a_bell as ring_a_bell
    import dm2.attacks.sweep as sweep
    from tests.test_attacks import SEARCH, STAGE_PROMPTS, FakeJudge, PositionJudge, stage_params

    p = stage_params()
    judges = {"world": FakeJudge(), "other": PositionJudge([0])}
    plain_inputs = sweep.prepare_attacks(tiny_pipe, judges["world"], "circle", STAGE_PROMPTS, p, SEARCH)
    plain, plain_images = sweep.sweep_model(tiny_pipe, judges, "circle", plain_inputs, p, tmp_path / "plain")
    shards = tmp_path / "shards"
    inputs = sweep.prepare_attacks(tiny_pipe, judges["world"], "circle", STAGE_PROMPTS, p, SEARCH, shards)
    kept, kept_images = sweep.sweep_model(tiny_pipe, judges, "circle", inputs, p, tmp_path / "kept", shards=shards)
    assert kept["sweep"] == plain["sweep"]
    assert all(torch.equal(kept_images[a], plain_images[a]) for a in plain_images)
    for f in (tmp_path / "plain").rglob("*"):
        if f.is_file():
            assert f.read_bytes() == (tmp_path / "kept" / f.relative_to(tmp_path / "plain")).read_bytes(), f

    runs = []
    monkeypatch.setattr(ring_a_bell, "genetic_search", lambda *a, **k: runs.append("search"))
    for name, attack in list(sweep.REGISTRY.items()):
        monkeypatch.setitem(sweep.REGISTRY, name, replace(attack, run=lambda *a, **k: runs.append("run")))
    capsys.readouterr()
    again_inputs = sweep.prepare_attacks(tiny_pipe, judges["world"], "circle", STAGE_PROMPTS, p, SEARCH, shards)
    again, _ = sweep.sweep_model(tiny_pipe, judges, "circle", again_inputs, p, tmp_path / "again", shards=shards)
    assert runs == [] and again["sweep"] == plain["sweep"]
    out = capsys.readouterr().out
    assert f"ring-a-bell search: process 0 reused {p.restarts}" in out
    assert f"process 0 reused 1 finished shard(s) of {shards / 'base_images'}" in out  # the base images too


def test_on_a_cpu_evaluate_attack_and_compare_run_as_cpu_processes_one_thread_processes(monkeypatch):
    import importlib
    from types import SimpleNamespace

    import dm2.core.sharding as sharding
    import stages.__main__ as entry
    from dm2.core.config import load_params

    params = load_params(ROOT / "params.yaml")
    launched, threads = [], []
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(sharding, "launch", lambda cmd, n: launched.append((cmd[1:], n)) or 7)
    monkeypatch.setattr(importlib, "import_module", lambda name: SimpleNamespace(__file__=name, main=lambda: threads.append(torch.get_num_threads())))
    before = torch.get_num_threads()
    try:
        for n in (3, 1):
            monkeypatch.setattr(entry, "load_params", lambda n=n: {**params, "device": "cpu", "cpu_processes": n})
            for argv in (["attack", "base"], ["compare", "uce"], ["evaluate"]):
                torch.set_num_threads(2)
                if n > 1:
                    with pytest.raises(SystemExit) as stop:
                        entry.main(argv)
                    assert stop.value.code == 7  # the launched processes' exit code
                else:
                    entry.main(argv)
            torch.set_num_threads(2)
            entry.main(["erase"])  # never launched, threads as the stage sets them
        assert launched == [(["-m", "stages", "attack", "base"], 3), (["-m", "stages", "compare", "uce"], 3), (["-m", "stages", "evaluate"], 3)]
        assert threads == [2, 1, 1, 1, 2]  # erase at 3, then cpu_processes 1: one thread in this process
        monkeypatch.setenv("WORLD_SIZE", "2")  # already launched (accelerate / torchrun / launch): run, as set up
        monkeypatch.setattr(entry, "load_params", lambda: {**params, "device": "cpu", "cpu_processes": 3})
        torch.set_num_threads(2)
        entry.main(["attack"])
        assert threads[-1] == 2 and len(launched) == 3
    finally:
        torch.set_num_threads(before)
