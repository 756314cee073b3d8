"""The four attacks on tiny random models: objectives fall, discrete tokens stay valid
vocabulary ids, Ring-A-Bell's best fitness never drops, one result per budget, CCE's
several tokens, the stage's measurement through `prepare_attacks` + `sweep_model`, bad
input. Sweep-level properties (ASR counting, reuse, restarts, saved inputs) are in
tests/test_attack_runs.py."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from dm2.attacks.cce import cce_attack, cce_phrase, cce_tokens, invert_concept
from dm2.attacks.common import denoising_loss, full_sequences, searchable, word_ids
from dm2.attacks.p4d import p4d_attack, p4d_loss
from dm2.attacks.params import ATTACKS, AttacksParams, CCEParams, P4DParams, RingABellParams, UnlearnDiffParams
from dm2.attacks.pez import Projection
from dm2.attacks.ring_a_bell import genetic_search, ring_a_bell_attack, world_words
from dm2.attacks.sweep import prepare_attacks, sweep_model
from dm2.attacks.unlearndiff import unlearndiff_attack
from dm2.core.config import ParamsError, load_params, parse_section
from dm2.core.io import load_tensors
from dm2.erasure.lora import add_lora, save_lora
from dm2.erasure.methods import INFO_FILE, apply_method, write_method_info
from dm2.models.diffusion import encode_prompts, encode_token_embeddings, generate_latents
from dm2.models.world_sd import world_text_encoder

PROMPTS = ["a red circle", "a photo of a blue ball on a white background", "a green disk"]
BANK = 6  # fixed (t, noise) draws on which objectives are compared


def cce_params(**kw) -> CCEParams:
    base = dict(
        images=2, candidates=3, budgets=[8], batch_size=2, lr=0.05, init_words=["photo"],
        train_templates=["a photo of a {token}", "a {token}"], prompt_templates=["a {token}", "a red {token}"],
    )  # fmt: skip
    return CCEParams(**{**base, **kw})


def rab_params(**kw) -> RingABellParams:
    base = dict(
        tokens=4, eta=2.0, population=8, budgets=[5], mutation_rate=0.3, crossover_rate=0.5,
        concept_words=["circle", "ball", "disk"], neutral_words=["square", "star"],
    )  # fmt: skip
    return RingABellParams(**{**base, **kw})


def with_random_lora(pipe, seed: int = 0) -> None:
    """A stand-in for the erased model: adapters whose B factors are not zero."""
    torch.manual_seed(seed)
    add_lora(pipe.unet, rank=4)
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.3)


@pytest.fixture
def x0(tiny_pipe):
    return generate_latents(tiny_pipe, encode_prompts(tiny_pipe, PROMPTS), seed=0, steps=2, guidance=2.0)


def on_bank(loss, seed: int = 123) -> torch.Tensor:
    """Mean of a per-sequence loss over BANK fixed random (t, noise) draws."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return torch.stack([loss(g) for _ in range(BANK)]).mean(0)


def vocabulary(pipe, texts=None) -> torch.Tensor:
    return searchable(pipe.tokenizer, pipe.text_encoder.get_input_embeddings().num_embeddings, texts)


def assert_valid_ids(ids: torch.Tensor, pipe, allowed: torch.Tensor | None = None) -> None:
    allowed = vocabulary(pipe) if allowed is None else allowed
    assert ids.dtype == torch.long and ids.min() >= 0 and ids.max() < len(allowed)
    assert allowed[ids].all(), "a special token slipped into the searched tokens"


def one_token(tokenizer, word: str) -> int:
    ids = tokenizer(word, add_special_tokens=False).input_ids
    assert len(ids) == 1
    return ids[0]


# ---------------------------------------------------------------- building blocks


@pytest.mark.parametrize("which", ["tiny", "world"])
def test_encode_token_embeddings_equals_text_encoder(tiny_pipe, which):
    text_encoder = tiny_pipe.text_encoder if which == "tiny" else world_text_encoder().eval()
    ids = tiny_pipe.tokenizer(PROMPTS, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        got = encode_token_embeddings(text_encoder, text_encoder.get_input_embeddings()(ids))
        want = text_encoder(ids)[0]
    assert torch.allclose(got, want, atol=1e-5)


def test_full_sequences_match_the_tokenizer(tiny_pipe):
    want = tiny_pipe.tokenizer(PROMPTS, padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert torch.equal(full_sequences(tiny_pipe.tokenizer, word_ids(tiny_pipe.tokenizer, PROMPTS)), want)


def test_search_space_of_prompts_holds_their_tokens_only(tiny_pipe):
    allowed = vocabulary(tiny_pipe, PROMPTS)
    assert set(allowed.nonzero().squeeze(1).tolist()) == {i for w in word_ids(tiny_pipe.tokenizer, PROMPTS) for i in w}
    assert not vocabulary(tiny_pipe)[tiny_pipe.tokenizer.all_special_ids].any()
    with pytest.raises(ParamsError, match="attacks.search_space"):
        vocabulary(tiny_pipe, [""])


def test_projection_finds_tokens_and_never_specials(tiny_pipe):
    table = tiny_pipe.text_encoder.get_input_embeddings().weight
    allowed = searchable(tiny_pipe.tokenizer, table.shape[0])
    project = Projection(table, allowed)
    words = torch.tensor([320, 736, 1069])
    assert torch.equal(project(table[words]), words)
    specials = torch.tensor(tiny_pipe.tokenizer.all_special_ids)
    assert allowed[project(table[specials])].all()
    # A restricted search space: every row goes to its nearest allowed id, as scoring the
    # whole table with the others masked out would.
    few = torch.zeros_like(allowed)
    few[[320, 736, 1069, 2000]] = True
    embeds = torch.randn(50, table.shape[1], generator=torch.Generator().manual_seed(0))
    sims = torch.nn.functional.normalize(embeds, dim=-1) @ torch.nn.functional.normalize(table, dim=-1).T
    assert torch.equal(Projection(table, few)(embeds), sims.masked_fill(~few, float("-inf")).argmax(-1))


# ---------------------------------------------------------------- P4D and UnlearnDiff


def test_p4d_objective_falls_and_tokens_stay_valid(tiny_pipe, x0):
    with_random_lora(tiny_pipe)
    p = P4DParams(tokens=16, budgets=[4, 12], lr=0.05, weight_decay=0.0)
    results = p4d_attack(tiny_pipe, PROMPTS, x0, p, seed=0, batch_size=2)
    assert len(results) == len(p.budgets)
    start = full_sequences(tiny_pipe.tokenizer, word_ids(tiny_pipe.tokenizer, PROMPTS))
    for result, budget in zip(results, p.budgets):  # every budget's tokens are valid, and only the free ones move
        ids, free = result.tensors["ids"], result.tensors["free"]
        assert_valid_ids(ids[free], tiny_pipe)
        assert torch.equal(ids[~free], start[~free])  # BOS, EOS and padding untouched
        assert result.columns["source_prompt"] == PROMPTS and result.prompts[0]
        assert len(result.log["loss"]) == budget  # the objective of every step so far
    result = results[-1]
    free = result.tensors["free"]
    assert free.sum(1).tolist() == [len(w) for w in word_ids(tiny_pipe.tokenizer, PROMPTS)]
    assert result.tensors["soft_embeddings"].shape == (int(free.sum()), 16)
    target = encode_prompts(tiny_pipe, PROMPTS)

    def objective(states):
        return on_bank(lambda g: p4d_loss(tiny_pipe.unet, tiny_pipe.scheduler, x0, target, states, g)).mean()

    assert objective(result.cond) < objective(encode_prompts(tiny_pipe, PROMPTS))


def test_p4d_on_the_base_model_keeps_the_normal_prompt(tiny_pipe, x0):
    """Nothing to attack: the original model already matches itself, so P4D stays put, at
    every budget."""
    results = p4d_attack(tiny_pipe, PROMPTS, x0, P4DParams(tokens=16, budgets=[1, 3], lr=0.05), seed=0, batch_size=3)
    normal = full_sequences(tiny_pipe.tokenizer, word_ids(tiny_pipe.tokenizer, PROMPTS))
    assert len(results) == 2
    for result in results:
        assert torch.equal(result.tensors["ids"], normal)
        assert torch.allclose(result.cond, encode_prompts(tiny_pipe, PROMPTS), atol=1e-6)
    assert max(results[-1].log["loss"]) == 0.0


@pytest.mark.parametrize("attack", ["p4d", "unlearndiff"])
def test_prompts_that_leave_the_search_keep_their_tokens_and_change_no_other(tiny_pipe, x0, attack):
    """Prompts the judge calls attacked at the first budget keep that budget's tokens, and
    the others' searches go on as without them, on fewer sequences (prompt 0 leaves
    half of the first chunk; prompt 2 leaves the second, which then stops)."""
    with_random_lora(tiny_pipe)

    def run(judge=None):
        if attack == "p4d":
            return p4d_attack(tiny_pipe, PROMPTS, x0, P4DParams(tokens=4, budgets=[2, 6], lr=0.05), 0, 2, judge=judge)
        return unlearndiff_attack(tiny_pipe, PROMPTS, x0, UnlearnDiffParams(prefix_tokens=2, budgets=[2, 6], lr=0.05), 0, 2, judge=judge)

    rows = []
    hook = tiny_pipe.unet.register_forward_hook(lambda module, args, out: rows.append(len(args[0])))
    try:
        alone = run()
        n_alone, rows[:] = sum(rows), []
        handed = []
        left = run(lambda result: handed.append(result) or torch.tensor([True, False, True]))
    finally:
        hook.remove()
    assert [r.tensors["ids"].tolist() for r in handed] == [r.tensors["ids"].tolist() for r in left]
    assert torch.equal(left[0].tensors["ids"], alone[0].tensors["ids"])
    ids, want = left[1].tensors["ids"], alone[1].tensors["ids"]
    assert torch.equal(ids[[0, 2]], alone[0].tensors["ids"][[0, 2]])  # kept from the first budget
    assert torch.equal(ids[1], want[1])  # prompt 1 searched on as before
    free = left[1].tensors["free"]
    row_of = free.nonzero()[:, 0]
    soft, soft_alone = left[1].tensors["soft_embeddings"], alone[1].tensors["soft_embeddings"]
    # Equal up to rounding: kernels on fewer rows may sum in another order (1.9e-07 seen).
    assert torch.allclose(soft[row_of == 1], soft_alone[row_of == 1], rtol=0, atol=1e-5)
    moved = (soft[row_of == 0] - soft_alone[row_of == 0]).abs().max()
    assert moved > 1e-3, "prompt 0 did not move after budget 2: the test checks nothing"
    assert sum(rows) < n_alone


def test_p4d_restarts_randomise_part_of_the_free_tokens(tiny_pipe, x0):
    """Restart 0 is P4D's own start (the prompt); restart 1 swaps a share of the free tokens
    for random allowed ones, so even on the base model it has something to optimise."""
    allowed = vocabulary(tiny_pipe, PROMPTS + ["square star triangle"])
    p = P4DParams(tokens=16, budgets=[1], lr=1e-9, weight_decay=0.0)  # one step that moves nothing: the start
    normal = full_sequences(tiny_pipe.tokenizer, word_ids(tiny_pipe.tokenizer, PROMPTS))
    zero = p4d_attack(tiny_pipe, PROMPTS, x0, p, seed=0, batch_size=3, allowed=allowed)[0]
    one = p4d_attack(tiny_pipe, PROMPTS, x0, p, seed=0, batch_size=3, allowed=allowed, restart=1)[0]
    assert torch.equal(zero.tensors["ids"], normal)
    free = one.tensors["free"]
    assert torch.equal(free, zero.tensors["free"]) and torch.equal(one.tensors["ids"][~free], normal[~free])
    changed = (one.tensors["ids"] != normal)[free].float().mean().item()
    assert 0.15 < changed < 0.85  # about RESTART_SWAP of them (some draws pick the same word)
    assert_valid_ids(one.tensors["ids"][free], tiny_pipe, allowed)
    assert min(one.log["loss"]) > 0.0  # away from the prompt: the base model no longer matches itself
    again = p4d_attack(tiny_pipe, PROMPTS, x0, p, seed=0, batch_size=3, allowed=allowed, restart=1)[0]
    assert torch.equal(again.tensors["ids"], one.tensors["ids"])
    two = p4d_attack(tiny_pipe, PROMPTS, x0, p, seed=0, batch_size=3, allowed=allowed, restart=2)[0]
    assert not torch.equal(two.tensors["ids"], one.tensors["ids"])


def test_p4d_tokens_limit_the_free_positions(tiny_pipe, x0):
    (result,) = p4d_attack(tiny_pipe, PROMPTS, x0, P4DParams(tokens=2, budgets=[1], lr=0.05), seed=0, batch_size=3)
    assert result.tensors["free"].sum(1).tolist() == [2, 2, 2]


def test_unlearndiff_objective_falls_and_prefix_stays_valid(tiny_pipe, x0):
    with_random_lora(tiny_pipe)
    p = UnlearnDiffParams(prefix_tokens=3, budgets=[12], lr=0.05, weight_decay=0.0)
    allowed = vocabulary(tiny_pipe, PROMPTS + ["square star triangle"])
    (result,) = unlearndiff_attack(tiny_pipe, PROMPTS, x0, p, seed=0, batch_size=3, allowed=allowed)
    ids, free = result.tensors["ids"], result.tensors["free"]
    assert free[:, 1:4].all() and free.sum() == 3 * len(PROMPTS)
    assert_valid_ids(ids[free], tiny_pipe, allowed)
    words = word_ids(tiny_pipe.tokenizer, PROMPTS)
    assert all(ids[i, 4 : 4 + len(w)].tolist() == w for i, w in enumerate(words))  # the prompt follows the prefix
    # The starting prefix: same seed, one step that moves nothing.
    (start,) = unlearndiff_attack(tiny_pipe, PROMPTS, x0, UnlearnDiffParams(prefix_tokens=3, budgets=[1], lr=1e-9), 0, 3, allowed)

    def objective(states):
        return on_bank(lambda g: denoising_loss(tiny_pipe.unet, tiny_pipe.scheduler, x0, states, g)).mean()

    assert objective(result.cond) < objective(start.cond)


def test_unlearndiff_prefix_can_start_from_a_word(tiny_pipe, x0):
    p = UnlearnDiffParams(prefix_tokens=2, budgets=[1], lr=1e-9, prefix_init="photo")
    (result,) = unlearndiff_attack(tiny_pipe, PROMPTS, x0, p, seed=0, batch_size=3)
    assert result.prompts[0] == "photo photo a red circle"
    # Restarts > 0 start from random prefixes, the prompt still after them.
    (other,) = unlearndiff_attack(tiny_pipe, PROMPTS, x0, p, seed=0, batch_size=3, restart=1)
    photo = one_token(tiny_pipe.tokenizer, "photo")
    assert (other.tensors["ids"][:, 1:3] != photo).any()
    words = word_ids(tiny_pipe.tokenizer, PROMPTS)
    assert all(other.tensors["ids"][i, 3 : 3 + len(w)].tolist() == w for i, w in enumerate(words))
    with pytest.raises(ParamsError, match="attacks.unlearndiff.prefix_init"):
        unlearndiff_attack(tiny_pipe, PROMPTS, x0, UnlearnDiffParams(2, [1], 0.1, prefix_init="a photo"), seed=0, batch_size=3)


# ---------------------------------------------------------------- CCE


def test_cce_inversion_learns_only_the_new_token(tiny_pipe, x0):
    with_random_lora(tiny_pipe)
    rows_before = tiny_pipe.text_encoder.get_input_embeddings().weight.clone()
    tokenizer, text_encoder, snapshots, losses = invert_concept(tiny_pipe, x0, cce_params(budgets=[5, 15]), seed=0)
    new_id = tokenizer.convert_tokens_to_ids("<cce>")
    after = text_encoder.get_input_embeddings().weight
    assert new_id == len(rows_before) and torch.equal(after[:new_id], rows_before)
    assert not torch.equal(after[new_id], rows_before[tokenizer.convert_tokens_to_ids("photo</w>")])
    # Nothing leaks into the pipeline: its tokenizer and text encoder never saw the token.
    assert len(tiny_pipe.tokenizer) == len(rows_before) == tiny_pipe.text_encoder.get_input_embeddings().num_embeddings
    assert len(losses) == 15
    # One snapshot per budget (tokens x width); the text encoder is left at the largest.
    assert [s.shape for s in snapshots] == [(1, 16), (1, 16)]
    assert torch.equal(snapshots[-1][0], after[new_id]) and not torch.equal(snapshots[0], snapshots[1])

    ids = tokenizer(["a photo of a <cce>"] * len(x0), padding="max_length", max_length=77, return_tensors="pt").input_ids
    start = text_encoder.get_input_embeddings().weight.clone()
    start[new_id] = start[tokenizer.convert_tokens_to_ids("photo</w>")]

    def objective(table):
        with torch.no_grad():
            states = encode_token_embeddings(text_encoder, table[ids])
        return on_bank(lambda g: denoising_loss(tiny_pipe.unet, tiny_pipe.scheduler, x0, states, g)).mean()

    assert objective(after) < objective(start)


def test_cce_attack_prompts_use_the_token(tiny_pipe, x0):
    results = cce_attack(tiny_pipe, x0, 3, cce_params(budgets=[2, 4]), seed=0)
    assert len(results) == 2
    for result in results:
        assert result.prompts == ["a <cce>", "a red <cce>", "a <cce>"]
        assert result.cond.shape == (3, 77, 16) and result.tensors["embedding"].shape == (1, 16)
        assert len(result.log["loss"]) == 4
    # Each budget's prompts are encoded with that budget's embedding.
    assert not torch.equal(results[0].tensors["embedding"], results[1].tensors["embedding"])
    assert not torch.allclose(results[0].cond, results[1].cond)


def test_cce_learns_several_tokens_together(tiny_pipe, x0):
    """tokens=3: three new tokens, each starting from its own init word and each learned;
    every other row stays as it was, and the prompts carry all three."""
    with_random_lora(tiny_pipe)
    p = cce_params(tokens=3, budgets=[10], init_words=["photo", "red", "circle"])
    assert cce_tokens(p) == ["<cce>0", "<cce>1", "<cce>2"] and cce_phrase(p) == "<cce>0 <cce>1 <cce>2"
    rows_before = tiny_pipe.text_encoder.get_input_embeddings().weight.clone()
    n = len(rows_before)
    tokenizer, text_encoder, snapshots, losses = invert_concept(tiny_pipe, x0, p, seed=0)
    new_ids = tokenizer.convert_tokens_to_ids(cce_tokens(p))
    assert new_ids == [n, n + 1, n + 2] and len(tokenizer) == n + 3
    after = text_encoder.get_input_embeddings().weight
    assert torch.equal(after[:n], rows_before)
    assert snapshots[0].shape == (3, 16) and torch.equal(snapshots[0], after[new_ids])
    inits = [one_token(tokenizer, w) for w in p.init_words]
    for j in range(3):  # each new row moved away from its start
        assert not torch.allclose(after[new_ids[j]], rows_before[inits[j]], atol=1e-4), f"token {j} was not learned"
    # The prompts hold the three tokens, in order, as three single ids.
    results = cce_attack(tiny_pipe, x0, 2, p, seed=0)
    assert [r.prompts for r in results] == [["a <cce>0 <cce>1 <cce>2", "a red <cce>0 <cce>1 <cce>2"]]
    ids = tokenizer(results[0].prompts[1], add_special_tokens=False).input_ids
    assert ids == [one_token(tokenizer, "a"), one_token(tokenizer, "red"), *new_ids]
    assert results[0].tensors["embedding"].shape == (3, 16)
    assert torch.equal(results[0].tensors["embedding"], snapshots[0])
    assert len(tiny_pipe.tokenizer) == n  # the pipeline's own tokenizer never saw them


@pytest.mark.parametrize("restart", [0, 1, 2])
def test_cce_tokens_start_from_the_init_words_in_turn(tiny_pipe, x0, restart):
    """Token j of restart k starts from init_words[(k + j) % n]."""
    p = cce_params(tokens=2, budgets=[1], lr=1e-9, init_words=["photo", "red", "circle"])
    rows = tiny_pipe.text_encoder.get_input_embeddings().weight
    inits = [one_token(tiny_pipe.tokenizer, w) for w in p.init_words]
    _, _, snapshots, _ = invert_concept(tiny_pipe, x0, p, seed=0, restart=restart)
    for j in range(2):
        assert torch.allclose(snapshots[0][j], rows[inits[(restart + j) % 3]], atol=1e-6)


def test_cce_rejects_a_multi_token_init_word(tiny_pipe, x0):
    with pytest.raises(ParamsError, match="attacks.cce.init_words"):
        invert_concept(tiny_pipe, x0, cce_params(init_words=["photo", "a photo"]), seed=0)


# ---------------------------------------------------------------- Ring-A-Bell


def fitness_of(pipe, tokens: torch.Tensor, prompts: list[str], vector: torch.Tensor, eta: float) -> torch.Tensor:
    """Ring-A-Bell's fitness of found tokens (N x K), recomputed from scratch."""
    with torch.no_grad():
        target = pipe.text_encoder(full_sequences(pipe.tokenizer, word_ids(pipe.tokenizer, prompts)))[0] + eta * vector
        states = pipe.text_encoder(full_sequences(pipe.tokenizer, tokens.tolist()))[0]
    return -(states - target).pow(2).mean(dim=(1, 2))


@pytest.mark.parametrize("from_prompt", [True, False])
def test_ring_a_bell_best_fitness_never_drops_and_improves(tiny_pipe, from_prompt):
    p = rab_params(population=16, budgets=[4, 12], init_from_prompt=from_prompt)
    allowed = vocabulary(tiny_pipe, PROMPTS + ["square star triangle"])
    results = ring_a_bell_attack(tiny_pipe, PROMPTS, p, seed=0, batch_size=2, allowed=allowed)
    assert len(results) == 2
    history = torch.tensor(results[-1].log["best_fitness"])  # generations + 1 x prompts
    assert history.shape == (p.budgets[-1] + 1, len(PROMPTS))
    assert (history[1:] >= history[:-1]).all()
    assert (history[-1] > history[0]).all()
    for budget, result in zip(p.budgets, results):
        assert_valid_ids(result.tensors["tokens"], tiny_pipe, allowed)
        assert result.tensors["concept_vector"].shape == (77, 16)
        # Each budget's tokens are the best after that many generations.
        got = fitness_of(tiny_pipe, result.tensors["tokens"], PROMPTS, result.tensors["concept_vector"], p.eta)
        assert torch.allclose(got, history[budget], atol=1e-5)


def test_genetic_search_returns_its_best(tiny_pipe):
    target = encode_prompts(tiny_pipe, PROMPTS[:1])
    init = torch.tensor([word_ids(tiny_pipe.tokenizer, PROMPTS[:1])[0] + [320]])
    g = torch.Generator().manual_seed(0)
    p = rab_params(budgets=[2, 5])
    best, history = genetic_search(tiny_pipe.text_encoder, tiny_pipe.tokenizer, target, init, p, g, vocabulary(tiny_pipe))
    assert len(best) == 2 and len(history) == 6
    for budget, tokens in zip(p.budgets, best):
        ids = full_sequences(tiny_pipe.tokenizer, tokens.tolist())
        with torch.no_grad():
            fitness = -(tiny_pipe.text_encoder(ids)[0] - target).pow(2).mean().item()
        assert fitness == pytest.approx(history[budget][0], abs=1e-6)


def test_searches_are_deterministic(tiny_pipe, x0):
    p = UnlearnDiffParams(prefix_tokens=2, budgets=[1, 3], lr=0.05)
    for restart in (0, 1):
        a, b = (unlearndiff_attack(tiny_pipe, PROMPTS, x0, p, seed=4, batch_size=2, restart=restart) for _ in range(2))
        assert all(torch.equal(x.tensors["ids"], y.tensors["ids"]) for x, y in zip(a, b)) and a[-1].log == b[-1].log
        rab = rab_params(init_from_prompt=False, budgets=[2, 5])
        c, d = (ring_a_bell_attack(tiny_pipe, PROMPTS, rab, seed=4, batch_size=2, restart=restart) for _ in range(2))
        assert all(torch.equal(x.tensors["tokens"], y.tensors["tokens"]) for x, y in zip(c, d)) and c[-1].log == d[-1].log


def test_ring_a_bell_needs_a_concept_word_in_the_prompts(tiny_pipe):
    with pytest.raises(ParamsError, match="attacks.ring_a_bell.concept_words"):
        ring_a_bell_attack(tiny_pipe, ["a blue square"], rab_params(), seed=0, batch_size=1)


# ---------------------------------------------------------------- the stage


class FakeJudge:
    """Says "circle" for the first three images of every batch, "square" for the rest."""

    classes = {"shape": ("circle", "square")}

    def probs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        circle = (torch.arange(len(images)) < 3).float() * 0.8 + 0.1
        return {"shape": torch.stack([circle, 1 - circle], dim=1)}


class PositionJudge:
    """Says "circle" for the images at the given positions of every batch."""

    classes = {"shape": ("circle", "square")}

    def __init__(self, positions: list[int]):
        self.positions = positions

    def probs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        circle = torch.zeros(len(images))
        circle[[i for i in self.positions if i < len(images)]] = 1.0
        circle = circle * 0.8 + 0.1
        return {"shape": torch.stack([circle, 1 - circle], dim=1)}


def stage_params(**kw) -> AttacksParams:
    base = dict(
        n_prompts=4, steps=2, guidance=2.0, seed=0, batch_size=4, search_space="prompts", restarts=2,
        cce=dict(images=2, candidates=5, budgets=[1, 2], batch_size=2, lr=0.01, init_words=["photo", "red"],
                 train_templates=["a photo of a {token}"], prompt_templates=["a {token}"]),
        p4d=dict(tokens=4, budgets=[1, 2], lr=0.05),
        unlearndiff=dict(prefix_tokens=2, budgets=[1, 2], lr=0.05),
        ring_a_bell=dict(tokens=3, eta=1.0, population=4, budgets=[1, 2], mutation_rate=0.2, crossover_rate=0.5,
                         concept_words=["circle", "ball"], neutral_words=["square"]),
        ideal_prompts=False,
    )  # fmt: skip
    return parse_section(AttacksParams, {**base, **kw}, "attacks")


STAGE_PROMPTS = ["a red circle", "a blue ball", "a circle on a white background", "a green ball", "one circle"]
SEARCH = STAGE_PROMPTS + ["a square", "a star"]


def stage_judges() -> dict:
    """Two judges that disagree: every figure is counted by each alone."""
    return {"world": FakeJudge(), "other": PositionJudge([0])}


@pytest.fixture
def lora_dir(tiny_pipe, tmp_path):
    with_random_lora(tiny_pipe)
    save_lora(tiny_pipe.unet, tmp_path / "erase")
    write_method_info(tmp_path / "erase", "dm2")
    tiny_pipe.unet.delete_adapters(tiny_pipe.unet.active_adapters())
    return tmp_path / "erase"


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_stage_writes_every_attack_and_asr_matches_the_judges(tiny_pipe, lora_dir, tmp_path):
    """The stages' sequence: the base side once, the base model swept, then the erased model
    (base + LoRA) swept from the same inputs."""
    p = stage_params()
    judges = stage_judges()
    inputs = prepare_attacks(tiny_pipe, judges["world"], "circle", STAGE_PROMPTS, p, SEARCH)
    runs = {"base": sweep_model(tiny_pipe, judges, "circle", inputs, p, tmp_path / "base")}
    assert apply_method(tiny_pipe, lora_dir) is None
    runs["erased"] = sweep_model(tiny_pipe, judges, "circle", inputs, p, tmp_path / "erased")
    for model, (metrics, images) in runs.items():
        # Budget 1: all 4 prompts made; "world" says the first three, "other" the first.
        # Budget 2: the 3 not attacked by both are made again; "world" says all three,
        # "other" the first of them. Best so far: world 75 -> 100 %, other 25 -> 50 %.
        assert metrics["asr"] == {"world": {a: 100.0 for a in ATTACKS}, "other": {a: 50.0 for a in ATTACKS}}
        assert set(metrics["seconds"]) == set(ATTACKS)
        for name in ATTACKS:
            sweep = metrics["sweep"][name]
            assert sweep["budgets"] == [1, 2]
            assert sweep["world"] == {"per_restart": [[75.0, 100.0]] * 2, "best": [75.0, 100.0], "any_restart": [75.0, 100.0]}
            assert sweep["other"] == {"per_restart": [[25.0, 50.0]] * 2, "best": [25.0, 50.0], "any_restart": [25.0, 50.0]}
            assert images[name].shape == (4, 3, 32, 32)
            for restart in range(p.restarts):
                folder = tmp_path / model / name / f"restart{restart}"
                rows = read_rows(folder / "prompts.csv")
                assert [r["is_concept_world"] for r in rows] == ["True"] * 4
                assert [r["is_concept_other"] for r in rows] == ["True", "True", "False", "False"]
                assert [float(r["score_other"]) for r in rows] == pytest.approx([0.9, 0.9, 0.1, 0.1])
                assert load_tensors(folder / "embeddings.safetensors")
                assert json.loads((folder / "log.json").read_text())
    # P4D's reference is the original model in both runs: nothing to match on the base model
    # from P4D's own start (restart 0); the erased model differs from it.
    base_log = json.loads((tmp_path / "base" / "p4d" / "restart0" / "log.json").read_text())
    erased_log = json.loads((tmp_path / "erased" / "p4d" / "restart0" / "log.json").read_text())
    assert max(base_log["loss"]) == 0.0 and min(erased_log["loss"]) > 0.0
    assert len(base_log["loss"]) == 2
    fitness = json.loads((tmp_path / "base" / "ring_a_bell" / "restart0" / "log.json").read_text())["best_fitness"]
    assert len(fitness) == 3  # generations 0, 1, 2
    for restart in range(p.restarts):  # model-agnostic: one search per restart, both models
        base_rows = read_rows(tmp_path / "base" / "ring_a_bell" / f"restart{restart}" / "prompts.csv")
        erased_rows = read_rows(tmp_path / "erased" / "ring_a_bell" / f"restart{restart}" / "prompts.csv")
        assert [(r["prompt"], r["token_ids"]) for r in base_rows] == [(r["prompt"], r["token_ids"]) for r in erased_rows]
        assert [r["prompt"] for r in base_rows] == inputs.ring[restart][-1].prompts


def test_stage_refuses_a_missing_lora_before_any_work(tiny_pipe, tmp_path):
    with pytest.raises(FileNotFoundError, match=INFO_FILE):
        apply_method(tiny_pipe, tmp_path / "nowhere")


def test_stage_refuses_more_prompts_than_the_csv_has(tiny_pipe):
    with pytest.raises(ParamsError, match="attacks.n_prompts"):
        prepare_attacks(tiny_pipe, FakeJudge(), "circle", STAGE_PROMPTS, stage_params(n_prompts=6), SEARCH)
    with pytest.raises(ParamsError, match="attacks.cce.candidates"):
        prepare_attacks(tiny_pipe, FakeJudge(), "circle", STAGE_PROMPTS[:4], stage_params(), SEARCH)


@pytest.mark.parametrize(
    "change, key",
    [
        (dict(n_prompts=0), "attacks.n_prompts"),
        (dict(p4d=dict(tokens=0, budgets=[2], lr=0.05)), "attacks.p4d.tokens"),
        (dict(unlearndiff=dict(prefix_tokens=0, budgets=[2], lr=0.05)), "attacks.unlearndiff.prefix_tokens"),
        (dict(search_space="words"), "attacks.search_space"),
        (dict(p4d=dict(tokens=4, iterations=2, lr=0.05)), "attacks.p4d"),  # the old key is gone
    ],
)
def test_bad_params_name_the_key(change, key):
    with pytest.raises(ParamsError, match=key):
        stage_params(**change)


def test_bad_ring_a_bell_and_cce_params_name_the_key():
    base = stage_params()
    with pytest.raises(ParamsError, match="attacks.ring_a_bell.tokens"):
        parse_section(RingABellParams, {**vars(base.ring_a_bell), "tokens": 0}, "attacks.ring_a_bell")
    with pytest.raises(ParamsError, match="attacks.cce.prompt_templates"):
        parse_section(CCEParams, {**vars(base.cce), "prompt_templates": ["a photo"]}, "attacks.cce")


def test_attacks_refuse_zero_prompts(tiny_pipe, x0):
    with pytest.raises(ParamsError, match="attacks.n_prompts"):
        p4d_attack(tiny_pipe, [], x0[:0], P4DParams(tokens=4, budgets=[1], lr=0.1), seed=0, batch_size=1)
    with pytest.raises(ParamsError, match="attacks.n_prompts"):
        unlearndiff_attack(tiny_pipe, [], x0[:0], UnlearnDiffParams(prefix_tokens=2, budgets=[1], lr=0.1), seed=0, batch_size=1)
    with pytest.raises(ParamsError, match="attacks.n_prompts"):
        ring_a_bell_attack(tiny_pipe, [], rab_params(), seed=0, batch_size=1)


def test_params_yaml_attacks_section_parses():
    p = parse_section(AttacksParams, load_params(Path(__file__).resolve().parents[1] / "params.yaml")["attacks"], "attacks")
    assert p.unlearndiff.prefix_tokens == 5 and 40 in p.unlearndiff.budgets  # the original's values
    assert p.restarts >= 3
    for name in ATTACKS:
        budgets = p.budgets(name)
        assert budgets == sorted(set(budgets)) and budgets[0] > 0
    assert 1 <= p.cce.tokens <= 8 and len(p.cce.init_words) >= 1


def test_ring_a_bell_words_come_from_the_world_unless_given():
    synonyms = {"circle": ["circle", "ball"], "square": ["square", "box"], "star": ["star"]}
    derived = world_words(rab_params(concept_words=[], neutral_words=[]), "circle", synonyms)
    assert derived.concept_words == ["circle", "ball"] and derived.neutral_words == ["square", "star"]
    given = rab_params(concept_words=["nude"], neutral_words=["clothed"])
    assert world_words(given, "nudity", synonyms) is given
    with pytest.raises(ParamsError, match="attacks.ring_a_bell.concept_words: 'nudity' is no world shape"):
        world_words(rab_params(concept_words=[], neutral_words=[]), "nudity", synonyms)
    bad = {"tokens": 4, "eta": 2.0, "population": 8, "budgets": [5], "mutation_rate": 0.3, "crossover_rate": 0.5, "concept_words": ["circle"]}
    with pytest.raises(ParamsError, match="attacks.ring_a_bell.concept_words/neutral_words: give both, or neither"):
        parse_section(RingABellParams, bad, "attacks.ring_a_bell")


def test_ideal_prompts_are_those_the_base_model_draws_the_concept_for(tiny_pipe, tmp_path):
    from dm2.models.diffusion import latents_to_images

    judge = PositionJudge([1, 3, 4])
    p = stage_params(n_prompts=3, ideal_prompts=True)
    inputs = prepare_attacks(tiny_pipe, judge, "circle", STAGE_PROMPTS, p, STAGE_PROMPTS)
    assert inputs.prompts == [STAGE_PROMPTS[i] for i in (1, 3, 4)]
    _, images = sweep_model(tiny_pipe, {"world": judge, "other": PositionJudge([0])}, "circle", inputs, p, tmp_path)
    # P4D on the base model keeps the prompt (nothing to match), and starts from the prompt's
    # own base noise: its images are the base images the prompts were chosen by.
    assert torch.allclose(images["p4d"], latents_to_images(tiny_pipe.vae, inputs.x0), atol=1e-5)
    with pytest.raises(ParamsError, match="attacks.n_prompts: 4 asked, only 3 of 5 normal prompts give a base image judged 'circle'"):
        prepare_attacks(tiny_pipe, judge, "circle", STAGE_PROMPTS, stage_params(n_prompts=4, ideal_prompts=True), STAGE_PROMPTS)
