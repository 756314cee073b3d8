"""The four attacks on tiny random models: objectives fall, discrete tokens stay valid
vocabulary ids, Ring-A-Bell's best fitness never drops, ASR arithmetic, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from dm2.attacks import (
    world_words,
    CCEParams,
    P4DParams,
    RingABellParams,
    UnlearnDiffParams,
    cce_attack,
    denoising_loss,
    full_sequences,
    genetic_search,
    invert_concept,
    p4d_attack,
    p4d_loss,
    project_to_vocabulary,
    ring_a_bell_attack,
    searchable,
    unlearndiff_attack,
    word_ids,
)
from dm2.config import ParamsError, load_params, parse_section
from dm2.diffusion import encode_token_embeddings
from dm2.diffusion import encode_prompts, generate_latents
from dm2.io import load_tensors
from dm2.lora import add_lora, save_lora
from dm2.methods import INFO_FILE, write_method_info
from dm2.world_models import world_text_encoder
from stages.attack import AttacksParams, run_attacks

PROMPTS = ["a red circle", "a photo of a blue ball on a white background", "a green disk"]
BANK = 6  # fixed (t, noise) draws on which objectives are compared


def cce_params(**kw) -> CCEParams:
    base = dict(
        images=2, candidates=3, iterations=8, batch_size=2, lr=0.05, init_word="photo",
        train_templates=["a photo of a {token}", "a {token}"], prompt_templates=["a {token}", "a red {token}"],
    )  # fmt: skip
    return CCEParams(**{**base, **kw})


def rab_params(**kw) -> RingABellParams:
    base = dict(
        tokens=4, eta=2.0, population=8, generations=5, mutation_rate=0.3, crossover_rate=0.5,
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
    words = torch.tensor([320, 736, 1069])
    assert torch.equal(project_to_vocabulary(table[words], table, allowed), words)
    specials = torch.tensor(tiny_pipe.tokenizer.all_special_ids)
    assert allowed[project_to_vocabulary(table[specials], table, allowed)].all()


# ---------------------------------------------------------------- P4D and UnlearnDiff


def test_p4d_objective_falls_and_tokens_stay_valid(tiny_pipe, x0):
    with_random_lora(tiny_pipe)
    p = P4DParams(tokens=16, iterations=12, lr=0.05, weight_decay=0.0)
    result = p4d_attack(tiny_pipe, PROMPTS, x0, p, seed=0, batch_size=2)
    ids, free = result.tensors["ids"], result.tensors["free"]
    assert_valid_ids(ids[free], tiny_pipe)
    start = full_sequences(tiny_pipe.tokenizer, word_ids(tiny_pipe.tokenizer, PROMPTS))
    assert torch.equal(ids[~free], start[~free])  # BOS, EOS and padding untouched
    assert free.sum(1).tolist() == [len(w) for w in word_ids(tiny_pipe.tokenizer, PROMPTS)]
    target = encode_prompts(tiny_pipe, PROMPTS)

    def objective(states):
        return on_bank(lambda g: p4d_loss(tiny_pipe.unet, tiny_pipe.scheduler, x0, target, states, g)).mean()

    assert objective(result.cond) < objective(encode_prompts(tiny_pipe, PROMPTS))
    assert len(result.log["loss"]) == p.iterations and result.prompts[0]
    assert result.columns["source_prompt"] == PROMPTS


def test_p4d_on_the_base_model_keeps_the_normal_prompt(tiny_pipe, x0):
    """Nothing to attack: the original model already matches itself, so P4D stays put."""
    result = p4d_attack(tiny_pipe, PROMPTS, x0, P4DParams(tokens=16, iterations=3, lr=0.05), seed=0, batch_size=3)
    assert torch.equal(result.tensors["ids"], full_sequences(tiny_pipe.tokenizer, word_ids(tiny_pipe.tokenizer, PROMPTS)))
    assert max(result.log["loss"]) == 0.0


def test_p4d_tokens_limit_the_free_positions(tiny_pipe, x0):
    result = p4d_attack(tiny_pipe, PROMPTS, x0, P4DParams(tokens=2, iterations=1, lr=0.05), seed=0, batch_size=3)
    assert result.tensors["free"].sum(1).tolist() == [2, 2, 2]


def test_unlearndiff_objective_falls_and_prefix_stays_valid(tiny_pipe, x0):
    with_random_lora(tiny_pipe)
    p = UnlearnDiffParams(prefix_tokens=3, iterations=12, lr=0.05, weight_decay=0.0)
    allowed = vocabulary(tiny_pipe, PROMPTS + ["square star triangle"])
    result = unlearndiff_attack(tiny_pipe, PROMPTS, x0, p, seed=0, batch_size=3, allowed=allowed)
    ids, free = result.tensors["ids"], result.tensors["free"]
    assert free[:, 1:4].all() and free.sum() == 3 * len(PROMPTS)
    assert_valid_ids(ids[free], tiny_pipe, allowed)
    words = word_ids(tiny_pipe.tokenizer, PROMPTS)
    assert all(ids[i, 4 : 4 + len(w)].tolist() == w for i, w in enumerate(words))  # the prompt follows the prefix
    # The starting prefix: same seed, zero iterations.
    start = unlearndiff_attack(tiny_pipe, PROMPTS, x0, UnlearnDiffParams(prefix_tokens=3, iterations=1, lr=1e-9), 0, 3, allowed)

    def objective(states):
        return on_bank(lambda g: denoising_loss(tiny_pipe.unet, tiny_pipe.scheduler, x0, states, g)).mean()

    assert objective(result.cond) < objective(start.cond)


def test_unlearndiff_prefix_can_start_from_a_word(tiny_pipe, x0):
    p = UnlearnDiffParams(prefix_tokens=2, iterations=1, lr=1e-9, prefix_init="photo")
    result = unlearndiff_attack(tiny_pipe, PROMPTS, x0, p, seed=0, batch_size=3)
    assert result.prompts[0] == "photo photo a red circle"
    with pytest.raises(ParamsError, match="attacks.unlearndiff.prefix_init"):
        unlearndiff_attack(tiny_pipe, PROMPTS, x0, UnlearnDiffParams(2, 1, 0.1, prefix_init="a photo"), seed=0, batch_size=3)


# ---------------------------------------------------------------- CCE


def test_cce_inversion_learns_only_the_new_token(tiny_pipe, x0):
    with_random_lora(tiny_pipe)
    rows_before = tiny_pipe.text_encoder.get_input_embeddings().weight.clone()
    tokenizer, text_encoder, losses = invert_concept(tiny_pipe, x0, cce_params(iterations=15), seed=0)
    new_id = tokenizer.convert_tokens_to_ids("<cce>")
    after = text_encoder.get_input_embeddings().weight
    assert new_id == len(rows_before) and torch.equal(after[:new_id], rows_before)
    assert not torch.equal(after[new_id], rows_before[tokenizer.convert_tokens_to_ids("photo</w>")])
    # Nothing leaks into the pipeline: its tokenizer and text encoder never saw the token.
    assert len(tiny_pipe.tokenizer) == len(rows_before) == tiny_pipe.text_encoder.get_input_embeddings().num_embeddings
    assert len(losses) == 15

    ids = tokenizer(["a photo of a <cce>"] * len(x0), padding="max_length", max_length=77, return_tensors="pt").input_ids
    start = text_encoder.get_input_embeddings().weight.clone()
    start[new_id] = start[tokenizer.convert_tokens_to_ids("photo</w>")]

    def objective(table):
        with torch.no_grad():
            states = encode_token_embeddings(text_encoder, table[ids])
        return on_bank(lambda g: denoising_loss(tiny_pipe.unet, tiny_pipe.scheduler, x0, states, g)).mean()

    assert objective(after) < objective(start)


def test_cce_attack_prompts_use_the_token(tiny_pipe, x0):
    result = cce_attack(tiny_pipe, x0, 3, cce_params(), seed=0)
    assert result.prompts == ["a <cce>", "a red <cce>", "a <cce>"]
    assert result.cond.shape == (3, 77, 16) and result.tensors["embedding"].shape == (16,)


def test_cce_rejects_a_multi_token_init_word(tiny_pipe, x0):
    with pytest.raises(ParamsError, match="attacks.cce.init_word"):
        invert_concept(tiny_pipe, x0, cce_params(init_word="a photo"), seed=0)


# ---------------------------------------------------------------- Ring-A-Bell


@pytest.mark.parametrize("from_prompt", [True, False])
def test_ring_a_bell_best_fitness_never_drops_and_improves(tiny_pipe, from_prompt):
    p = rab_params(population=16, generations=12, init_from_prompt=from_prompt)
    allowed = vocabulary(tiny_pipe, PROMPTS + ["square star triangle"])
    result = ring_a_bell_attack(tiny_pipe, PROMPTS, p, seed=0, batch_size=2, allowed=allowed)
    history = torch.tensor(result.log["best_fitness"])  # generations + 1 x prompts
    assert history.shape == (p.generations + 1, len(PROMPTS))
    assert (history[1:] >= history[:-1]).all()
    assert (history[-1] > history[0]).all()
    assert_valid_ids(result.tensors["tokens"], tiny_pipe, allowed)
    assert result.tensors["concept_vector"].shape == (77, 16)


def test_genetic_search_returns_its_best(tiny_pipe):
    target = encode_prompts(tiny_pipe, PROMPTS[:1])
    init = torch.tensor([word_ids(tiny_pipe.tokenizer, PROMPTS[:1])[0] + [320]])
    g = torch.Generator().manual_seed(0)
    best, history = genetic_search(tiny_pipe.text_encoder, tiny_pipe.tokenizer, target, init, rab_params(), g, vocabulary(tiny_pipe))
    ids = full_sequences(tiny_pipe.tokenizer, best.tolist())
    with torch.no_grad():
        fitness = -(tiny_pipe.text_encoder(ids)[0] - target).pow(2).mean().item()
    assert fitness == pytest.approx(history[-1][0], abs=1e-6)


def test_searches_are_deterministic(tiny_pipe, x0):
    p = UnlearnDiffParams(prefix_tokens=2, iterations=3, lr=0.05)
    a, b = (unlearndiff_attack(tiny_pipe, PROMPTS, x0, p, seed=4, batch_size=2) for _ in range(2))
    assert torch.equal(a.tensors["ids"], b.tensors["ids"]) and a.log == b.log
    c, d = (ring_a_bell_attack(tiny_pipe, PROMPTS, rab_params(init_from_prompt=False), seed=4, batch_size=2) for _ in range(2))
    assert torch.equal(c.tensors["tokens"], d.tensors["tokens"]) and c.log == d.log


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


def stage_params(**kw) -> AttacksParams:
    base = dict(
        n_prompts=4, steps=2, guidance=2.0, seed=0, batch_size=4, search_space="prompts",
        cce=dict(images=2, candidates=5, iterations=2, batch_size=2, lr=0.01, init_word="photo",
                 train_templates=["a photo of a {token}"], prompt_templates=["a {token}"]),
        p4d=dict(tokens=4, iterations=2, lr=0.05),
        unlearndiff=dict(prefix_tokens=2, iterations=2, lr=0.05),
        ring_a_bell=dict(tokens=3, eta=1.0, population=4, generations=2, mutation_rate=0.2, crossover_rate=0.5,
                         concept_words=["circle", "ball"], neutral_words=["square"]),
        ideal_prompts=False,
    )  # fmt: skip
    return parse_section(AttacksParams, {**base, **kw}, "attacks")


STAGE_PROMPTS = ["a red circle", "a blue ball", "a circle on a white background", "a green ball", "one circle"]


@pytest.fixture
def lora_dir(tiny_pipe, tmp_path):
    with_random_lora(tiny_pipe)
    save_lora(tiny_pipe.unet, tmp_path / "erase")
    write_method_info(tmp_path / "erase", "dm2")
    tiny_pipe.unet.delete_adapters(tiny_pipe.unet.active_adapters())
    return tmp_path / "erase"


def test_stage_writes_every_attack_and_asr_matches_the_judge(tiny_pipe, lora_dir, tmp_path):
    out = tmp_path / "attacks"
    search = STAGE_PROMPTS + ["a square", "a star"]
    metrics, grids, fitness = run_attacks(tiny_pipe, lora_dir, FakeJudge(), "circle", STAGE_PROMPTS, stage_params(), out, search)
    for model in ("base", "erased"):
        assert metrics[model] == {name: 75.0 for name in ("cce", "p4d", "unlearndiff", "ring_a_bell")}  # 3 of 4
        for name in ("cce", "p4d", "unlearndiff", "ring_a_bell"):
            with (out / model / name / "prompts.csv").open(newline="") as f:
                rows = list(csv.DictReader(f))
            assert [r["is_concept"] for r in rows] == ["True"] * 3 + ["False"]
            assert load_tensors(out / model / name / "embeddings.safetensors")
            assert json.loads((out / model / name / "log.json").read_text())
    assert grids["p4d"].shape == (2, 4, 3, 32, 32) and len(fitness) == 3
    # P4D's reference is the original model in both runs: nothing to match on the base model.
    assert max(json.loads((out / "base" / "p4d" / "log.json").read_text())["loss"]) == 0.0
    assert min(json.loads((out / "erased" / "p4d" / "log.json").read_text())["loss"]) > 0.0
    with (out / "base" / "ring_a_bell" / "prompts.csv").open() as a, (out / "erased" / "ring_a_bell" / "prompts.csv").open() as b:
        assert a.read() == b.read()  # model-agnostic: one search, both models


def test_stage_refuses_a_missing_lora_before_any_work(tiny_pipe, tmp_path):
    with pytest.raises(FileNotFoundError, match=INFO_FILE):
        run_attacks(tiny_pipe, tmp_path / "nowhere", FakeJudge(), "circle", STAGE_PROMPTS, stage_params(), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_stage_refuses_more_prompts_than_the_csv_has(tiny_pipe, lora_dir, tmp_path):
    with pytest.raises(ParamsError, match="attacks.n_prompts"):
        run_attacks(tiny_pipe, lora_dir, FakeJudge(), "circle", STAGE_PROMPTS, stage_params(n_prompts=6), tmp_path)


@pytest.mark.parametrize(
    "change, key",
    [
        (dict(n_prompts=0), "attacks.n_prompts"),
        (dict(p4d=dict(tokens=0, iterations=2, lr=0.05)), "attacks.p4d.tokens"),
        (dict(unlearndiff=dict(prefix_tokens=0, iterations=2, lr=0.05)), "attacks.unlearndiff.prefix_tokens"),
        (dict(search_space="words"), "attacks.search_space"),
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
        p4d_attack(tiny_pipe, [], x0[:0], P4DParams(tokens=4, iterations=1, lr=0.1), seed=0, batch_size=1)
    with pytest.raises(ParamsError, match="attacks.n_prompts"):
        ring_a_bell_attack(tiny_pipe, [], rab_params(), seed=0, batch_size=1)
    with pytest.raises(ParamsError, match="attacks.n_prompts"):
        cce_attack(tiny_pipe, x0, 0, cce_params(), seed=0)



def test_params_yaml_attacks_section_parses():
    p = parse_section(AttacksParams, load_params(Path(__file__).resolve().parents[1] / "params.yaml")["attacks"], "attacks")
    assert p.unlearndiff.prefix_tokens == 5 and p.unlearndiff.iterations == 40  # the original's values


def test_ring_a_bell_words_come_from_the_world_unless_given():
    synonyms = {"circle": ["circle", "ball"], "square": ["square", "box"], "star": ["star"]}
    derived = world_words(rab_params(concept_words=[], neutral_words=[]), "circle", synonyms)
    assert derived.concept_words == ["circle", "ball"] and derived.neutral_words == ["square", "star"]
    given = rab_params(concept_words=["nude"], neutral_words=["clothed"])
    assert world_words(given, "nudity", synonyms) is given
    with pytest.raises(ParamsError, match="attacks.ring_a_bell.concept_words: 'nudity' is no world shape"):
        world_words(rab_params(concept_words=[], neutral_words=[]), "nudity", synonyms)
    bad = {"tokens": 4, "eta": 2.0, "population": 8, "generations": 5, "mutation_rate": 0.3, "crossover_rate": 0.5, "concept_words": ["circle"]}
    with pytest.raises(ParamsError, match="attacks.ring_a_bell.concept_words/neutral_words: give both, or neither"):
        parse_section(RingABellParams, bad, "attacks.ring_a_bell")


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


def test_ideal_prompts_are_those_the_base_model_draws_the_concept_for(tiny_pipe, tmp_path):
    from dm2.diffusion import latents_to_images
    from stages.attack import attack_model, prepare_attacks

    judge = PositionJudge([1, 3, 4])
    p = stage_params(n_prompts=3, ideal_prompts=True)
    inputs = prepare_attacks(tiny_pipe, judge, "circle", STAGE_PROMPTS, p, STAGE_PROMPTS)
    assert inputs.prompts == [STAGE_PROMPTS[i] for i in (1, 3, 4)]
    _, images, _ = attack_model(tiny_pipe, judge, "circle", inputs, p, tmp_path)
    # P4D on the base model keeps the prompt (nothing to match), and starts from the prompt's
    # own base noise: its images are the base images the prompts were chosen by.
    assert torch.allclose(images["p4d"], latents_to_images(tiny_pipe.vae, inputs.x0), atol=1e-5)
    with pytest.raises(ParamsError, match="attacks.n_prompts: 4 asked, only 3 of 5 normal prompts give a base image judged 'circle'"):
        prepare_attacks(tiny_pipe, judge, "circle", STAGE_PROMPTS, stage_params(n_prompts=4, ideal_prompts=True), STAGE_PROMPTS)
