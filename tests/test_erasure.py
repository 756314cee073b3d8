"""The DM2 loop (dm2/erasure/dark_miner.py) on tiny random models: candidates, verification, the
images x circumventing trains on, and what it refuses."""

from __future__ import annotations

import copy

import pytest
import torch

from dm2.core.config import ParamsError
from dm2.erasure.dark_miner import DarkMiner, DM2Settings, EraseState, verification_score, verify_features
from dm2.erasure.params import VerifyParams
from dm2.models.diffusion import encode_prompts
from tests.test_erase import pool, settings  # noqa: F401  (pool: fixture)


def loops(pipe, clip, pool, s: DM2Settings) -> EraseState:
    """A fresh run of the loop alone (no checkpoint): adds the LoRA to `pipe`."""
    return DarkMiner(pipe, clip, pool[0], pool[1], s).run(EraseState("test"))


def test_circumventing_uses_every_image_x(tiny_pipe, tiny_clip, pool):
    s = settings(max_loops=1)
    s.circumvent.images = 2
    x = loops(tiny_pipe, tiny_clip, pool, s).originals[0]
    assert x.shape == (2, 4, 8, 8) and not torch.equal(x[0], x[1])  # two seeds, made once, kept for replay


def test_several_candidates_go_on_with_the_best(tiny_pipe, tiny_clip, pool):
    """With mine.candidates 3 every loop verifies three embeddings, keeps the highest s(c),
    and the first candidate is the embedding a one-candidate run mines."""
    s = settings(max_loops=1)
    fresh = copy.deepcopy(tiny_pipe)  # the miner adds the adapters to the pipe it is given
    one = loops(tiny_pipe, tiny_clip, pool, s)
    s.mine.candidates = 3
    three = loops(fresh, tiny_clip, pool, s)
    scores = three.log[0]["s_candidates"]
    assert len(scores) == 3 and len(set(scores)) == 3
    assert three.log[0]["s"] == max(scores)
    assert scores[0] == pytest.approx(one.log[0]["s"], abs=1e-6)
    best = scores.index(max(scores))
    assert torch.equal(three.embeddings[0], one.embeddings[0]) == (best == 0)


def test_keep_start_goes_on_with_the_start_when_mining_moved_away(tiny_pipe, tiny_clip, pool):
    """mine.keep_start verifies the unmined start beside the mined embedding: with tau between
    the two scores the loop circumvents whichever is higher, where a plain run stops when the
    mined one is the lower."""
    s = settings(tau=1.0, max_loops=1)  # no cosine exceeds 1: one loop, scores only
    s.mine.keep_start = True
    probe = loops(copy.deepcopy(tiny_pipe), tiny_clip, pool, s)
    mined_s, start_s = probe.log[0]["s_candidates"]
    assert mined_s != start_s and probe.stop == "verification"
    s.verify.tau = (mined_s + start_s) / 2
    kept = loops(copy.deepcopy(tiny_pipe), tiny_clip, pool, s)
    assert kept.log[0]["circumvented"] and kept.log[0]["start_won"] == (start_s > mined_s)
    miner = DarkMiner(copy.deepcopy(tiny_pipe), tiny_clip, pool[0], pool[1], s)
    assert torch.equal(kept.embeddings[0], miner.init) == (start_s > mined_s)
    s.mine.keep_start = False
    plain = loops(tiny_pipe, tiny_clip, pool, s)
    assert plain.log[0]["s"] == pytest.approx(mined_s, abs=1e-6)
    assert plain.log[0]["circumvented"] == (mined_s > start_s) and "s_candidates" not in plain.log[0]


@pytest.mark.parametrize("targets", [["to_k"], ["to_q", "to_v"]])
def test_lora_goes_on_the_projections_named(tiny_pipe, tiny_clip, pool, targets):
    """`erase.lora_targets`: adapters on exactly those projections, self- and cross-attention."""
    s = settings(max_loops=1)
    s.erase.lora_targets = targets
    DarkMiner(tiny_pipe, tiny_clip, pool[0], pool[1], s)
    adapted = {name.rsplit(".", 1)[0] for name, _ in tiny_pipe.unet.named_modules() if name.endswith(".lora_A")}
    assert {name.split(".attn")[1].split(".", 1)[1] for name in adapted} == set(targets)
    assert {name.split(".attn")[1][0] for name in adapted} == {"1", "2"}


def test_loop_stops_by_verification(tiny_pipe, tiny_clip, pool):
    state = loops(tiny_pipe, tiny_clip, pool, settings(tau=1.0))  # no cosine exceeds 1
    assert state.stop == "verification" and len(state.log) == 1 and not state.log[0]["circumvented"]
    assert state.log[0]["s_after"] is None


def test_every_loop_is_reported_as_it_ends(tiny_pipe, tiny_clip, pool):
    seen = []
    miner = DarkMiner(tiny_pipe, tiny_clip, pool[0], pool[1], settings(max_loops=2))
    state = miner.run(EraseState("test"), on_loop=lambda st: seen.append((len(st.log), st.stop)))
    assert seen == [(1, ""), (2, "max_loops")] and state.stop == "max_loops"


def test_pool_smaller_than_k_is_refused(tiny_pipe, tiny_clip, pool):
    s = settings()
    s.mine.k = 10
    with pytest.raises(ParamsError, match="pool.size"):
        DarkMiner(tiny_pipe, tiny_clip, pool[0], pool[1], s)


def test_verification_measures_against_the_reference_prompt(tiny_pipe, tiny_clip, pool):
    v = VerifyParams(tau=0.2, steps=2, guidance=2.0, seed=0)
    f_e = tiny_clip.encode_images(pool[1][:2])
    photo, circle = encode_prompts(tiny_pipe, ["a photo"]), encode_prompts(tiny_pipe, ["a circle photo"])
    # x_c and x_r from the same states and seed are one image: Enc(x_c) - Enc(x_r) = 0
    f_circle, f_photo = (verify_features(tiny_pipe, tiny_clip, states, v.references, v) for states in (circle, photo))
    assert verification_score(tiny_pipe, tiny_clip, circle, f_circle, f_e, v) == 0.0
    assert verification_score(tiny_pipe, tiny_clip, circle, f_photo, f_e, v) != 0.0


def test_reference_images_are_made_once_per_model(tiny_pipe, tiny_clip, pool, monkeypatch):
    """x_r is made again only after circumventing changed the model: 2 loops of 2 candidates
    make it 3 times (not 6), and the scores equal those from freshly made references."""
    import dm2.erasure.dark_miner

    made = []

    def counting(pipe, clip, cond, n, v):
        made.append(n)
        return verify_features(pipe, clip, cond, n, v)

    s = settings(max_loops=2)
    s.mine.candidates = 2
    s.verify.samples, s.verify.references = 1, 3  # tell x_r's calls (n = 3) from x_c's
    monkeypatch.setattr(dm2.erasure.dark_miner, "verify_features", counting)
    miner = DarkMiner(tiny_pipe, tiny_clip, pool[0], pool[1], s)
    state = miner.run(EraseState("test"))
    assert made.count(3) == 3 and made.count(1) == 2 * 2 + 2
    # the cached features (made for the last s_after) are those made afresh on the final model
    assert torch.equal(miner.f_reference, verify_features(tiny_pipe, tiny_clip, miner.reference, 3, s.verify))


def test_mine_template_is_where_the_loop_conditions_its_embeddings(tiny_pipe, tiny_clip, pool):
    """`mine.template`: the miner's states of c (mining, verification, circumventing) are c
    placed in the template's words, the same c giving other states than the paper's "{c}"."""
    s = settings(max_loops=1)
    s.mine.template = "a photo of a {c}"
    miner = DarkMiner(tiny_pipe, tiny_clip, pool[0], pool[1], s)
    with torch.no_grad():
        placed = miner.encode(miner.init)
        s.mine.template = "{c}"
        bare = miner.encode(miner.init)
    assert not torch.allclose(placed, bare, atol=1e-3)
    s.mine.template = "a photo of a {c}"
    state = miner.run(EraseState("test"))
    assert len(state.log) == 1 and state.embeddings[0].shape == miner.init.shape
