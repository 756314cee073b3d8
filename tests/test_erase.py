"""The pool and erase stages end to end on tiny random models: outputs, LoRA round trip
through diffusers, checkpoints, and resuming a killed run. The loop itself:
tests/test_erasure.py."""

from __future__ import annotations

import json

import pytest
import torch

import dm2.erasure.dark_miner
import stages.erase as erase_stage
from dm2.core.config import ParamsError
from dm2.core.io import fingerprint, load_tensors, read_metadata
from dm2.core.provenance import weights_hash
from dm2.erasure.dark_miner import DM2Settings
from dm2.erasure.lora import LORA_FILE, adapters_disabled, load_lora_into
from dm2.erasure.params import CircumventParams, EraseParams, MineParams, PoolParams, VerifyParams
from dm2.models.diffusion import encode_prompts
from stages.erase import erase, read_pool
from stages.pool import make_pool, save_pool

SCHEDULE = dict(lr_drop_epoch=2, lr_after_drop=0.001, grad_clip=10.0, optimizer="adam")


def settings(tau: float = -1.0, max_loops: int = 3) -> DM2Settings:
    return DM2Settings(
        EraseParams(max_loops=max_loops, lora_rank=4, seed=0),
        MineParams(epochs=3, lr=0.05, tokens=4, k=2, **SCHEDULE),
        VerifyParams(tau=tau, steps=2, guidance=2.0, seed=0),
        CircumventParams(epochs=3, lr=0.01, steps=2, guidance=2.0, **SCHEDULE),
    )


@pytest.fixture
def pool(tiny_pipe):
    return make_pool(tiny_pipe, "a circle photo", PoolParams(size=4, steps=2, guidance=2.0, seed=0))


def run(pipe, clip, pool, out_dir, **kw):
    s = settings(**kw)
    return erase(pipe, clip, pool[0], pool[1], s, out_dir, fingerprint(s, data=pool[0]))


def test_pool_is_deterministic_and_in_range(tiny_pipe):
    p = PoolParams(size=3, steps=2, guidance=2.0, seed=5)
    lat1, img1 = make_pool(tiny_pipe, "a circle photo", p)
    lat2, _ = make_pool(tiny_pipe, "a circle photo", p)
    assert lat1.shape == (3, 4, 8, 8) and img1.shape == (3, 3, 32, 32)
    assert torch.equal(lat1, lat2)
    assert 0.0 <= img1.min() and img1.max() <= 1.0


def test_erase_runs_to_max_loops_and_writes_outputs(tiny_pipe, tiny_clip, pool, tmp_path):
    state = run(tiny_pipe, tiny_clip, pool, tmp_path)
    assert state.stop == "max_loops" and len(state.log) == 3
    log = json.loads((tmp_path / "loop_log.json").read_text())
    assert [r["loop"] for r in log["loops"]] == [0, 1, 2]
    emb = load_tensors(tmp_path / "embeddings.safetensors")
    assert sorted(emb) == ["c_000", "c_001", "c_002"] and emb["c_000"].shape == (1, 4, 16)
    assert float(read_metadata(tmp_path / "embeddings.safetensors")["s_001"]) == pytest.approx(state.log[1]["s"], abs=1e-5)
    # s(c) of each loop's c again after its circumventing step: a cosine, from the changed model
    assert all(-1.0 <= r["s_after"] <= 1.0 and r["s_after"] != r["s"] for r in log["loops"])
    checkpoint = load_tensors(tmp_path / erase_stage.CHECKPOINT)  # the images x, kept for replay on resume
    assert all(torch.equal(checkpoint[f"x_{i:03d}"], state.originals[i]) for i in range(3))


def test_lora_round_trips_through_diffusers(tiny_pipe, tiny_clip, pool, tmp_path):
    run(tiny_pipe, tiny_clip, pool, tmp_path, max_loops=1)
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([300])
    c = encode_prompts(tiny_pipe, ["a circle photo"])
    with torch.no_grad():
        erased = tiny_pipe.unet(x, t, encoder_hidden_states=c).sample
        with adapters_disabled(tiny_pipe.unet):
            base = tiny_pipe.unet(x, t, encoder_hidden_states=c).sample
        tiny_pipe.unet.delete_adapters(tiny_pipe.unet.active_adapters())
        assert torch.equal(tiny_pipe.unet(x, t, encoder_hidden_states=c).sample, base)
        load_lora_into(tiny_pipe, tmp_path)
        reloaded = tiny_pipe.unet(x, t, encoder_hidden_states=c).sample
    assert not torch.allclose(erased, base)
    assert torch.allclose(reloaded, erased, atol=1e-6)


def test_killed_run_resumes_and_matches_uninterrupted(tiny_pipe, tiny_clip, pool, tmp_path, monkeypatch):
    full = run(tiny_pipe, tiny_clip, pool, tmp_path / "full")
    reference = load_tensors(tmp_path / "full" / LORA_FILE)
    tiny_pipe.unet.delete_adapters(tiny_pipe.unet.active_adapters())

    calls = {"n": 0}
    real = dm2.erasure.dark_miner.circumvent

    def dies_in_loop_2(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed in the middle of loop 1's circumventing
        return real(*args, **kwargs)

    monkeypatch.setattr(dm2.erasure.dark_miner, "circumvent", dies_in_loop_2)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_pipe, tiny_clip, pool, tmp_path / "killed")
    assert len(json.loads((tmp_path / "killed" / "loop_log.json").read_text())["loops"]) == 1
    monkeypatch.setattr(dm2.erasure.dark_miner, "circumvent", real)
    tiny_pipe.unet.delete_adapters(tiny_pipe.unet.active_adapters())

    resumed = run(tiny_pipe, tiny_clip, pool, tmp_path / "killed")
    assert [r["s"] for r in resumed.log] == [r["s"] for r in full.log]
    got = load_tensors(tmp_path / "killed" / LORA_FILE)
    assert got.keys() == reference.keys()
    assert all(torch.equal(got[k], reference[k]) for k in got)


def test_checkpoint_from_other_settings_is_not_resumed(tiny_pipe, tiny_clip, pool, tmp_path):
    run(tiny_pipe, tiny_clip, pool, tmp_path, max_loops=1)
    tiny_pipe.unet.delete_adapters(tiny_pipe.unet.active_adapters())
    state = run(tiny_pipe, tiny_clip, pool, tmp_path, max_loops=2)
    assert [r["loop"] for r in state.log] == [0, 1]


def test_corrupt_checkpoint_is_set_aside_and_the_run_starts_afresh(tiny_pipe, tiny_clip, pool, tmp_path, capsys):
    run(tiny_pipe, tiny_clip, pool, tmp_path, max_loops=1)
    path = tmp_path / erase_stage.CHECKPOINT
    path.write_bytes(path.read_bytes()[:100])
    tiny_pipe.unet.delete_adapters(tiny_pipe.unet.active_adapters())
    state = run(tiny_pipe, tiny_clip, pool, tmp_path, max_loops=1)
    assert [r["loop"] for r in state.log] == [0]
    assert f"{path}: not a readable safetensors file" in capsys.readouterr().out
    assert read_metadata(path)["fingerprint"] == state.fingerprint  # rewritten whole


def test_run_id_changes_with_the_weights(tiny_pipe, tiny_clip):
    models = (tiny_pipe.unet, tiny_pipe.text_encoder, tiny_clip.model)  # CLIP holds a 0-dim logit_scale
    before = weights_hash(*models)
    assert weights_hash(*models) == before
    with torch.no_grad():
        next(tiny_pipe.unet.parameters()).view(-1)[0] += 1e-3
    assert weights_hash(*models) != before


def test_pool_of_another_concept_is_refused(tiny_pipe, tmp_path):
    latents, images = make_pool(tiny_pipe, "a circle photo", PoolParams(size=2, steps=2, guidance=2.0, seed=0))
    save_pool(latents, images, "a circle photo", tmp_path)
    path = tmp_path / "latents.safetensors"
    assert read_pool(path, "a circle photo")["latents"].shape[0] == 2
    with pytest.raises(ParamsError, match=rf"{path}: was made from 'a circle photo', not 'a square photo'; run the pool stage"):
        read_pool(path, "a square photo")


def test_a_refused_checkpoint_says_what_changed(tiny_pipe, tiny_clip, pool, tmp_path, capsys):
    s = settings(max_loops=1)
    made_by = {"params": "p", "pool": "q", "CLIP weights": "a", "code": "c"}
    erase(tiny_pipe, tiny_clip, pool[0], pool[1], s, tmp_path, json.dumps(made_by))
    tiny_pipe.unet.delete_adapters(tiny_pipe.unet.active_adapters())
    erase(tiny_pipe, tiny_clip, pool[0], pool[1], s, tmp_path, json.dumps({**made_by, "CLIP weights": "b", "code": "d"}))
    assert "was made by other CLIP weights, code; starting afresh" in capsys.readouterr().out
