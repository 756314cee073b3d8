"""The attack sweep (dm2.attacks.sweep) on tiny random models: ASR counted best-so-far per
restart, the cheaper budgets' work reused (one run per restart, nothing judged the concept
made again), restarts that differ and repeat, bad budgets / restarts / tokens named, and
the base side saved and read back only with the same settings."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

import dm2.attacks.cce as cce
import dm2.attacks.pez as pez
import dm2.attacks.ring_a_bell as ring_a_bell
import dm2.attacks.sweep as sweep
from dm2.attacks.cce import cce_attack
from dm2.attacks.common import AttackInputs
from dm2.attacks.p4d import p4d_attack
from dm2.attacks.params import ATTACKS, P4DParams, UnlearnDiffParams
from dm2.attacks.ring_a_bell import ring_a_bell_attack
from dm2.attacks.sweep import asr_curves, budget_plot_rows, disagreements, load_inputs, prepare_attacks, save_inputs, search_texts_for, sweep_model
from dm2.attacks.unlearndiff import unlearndiff_attack
from dm2.core.config import ParamsError
from dm2.world.prompts import write_prompts
from tests.test_attacks import (
    PROMPTS,
    SEARCH,
    STAGE_PROMPTS,
    FakeJudge,
    PositionJudge,
    cce_params,
    rab_params,
    stage_judges,
    stage_params,
    vocabulary,
    with_random_lora,
    x0,  # noqa: F401  (fixture)
)


class ContentJudge:
    """Says "circle" for images by a pseudo-random function of their pixels: verdicts that
    change from budget to budget and restart to restart as the prompts do."""

    classes = {"shape": ("circle", "square")}

    def __init__(self, scale: float):
        self.scale = scale

    def probs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        circle = (images.double().mean(dim=(1, 2, 3)) * self.scale).frac().float()
        return {"shape": torch.stack([circle, 1 - circle], dim=1)}


class RandomJudge:
    """Says "circle" at random (seeded), a `rate` of the time, whatever the image: verdicts
    that come and go between budgets, as a real judge's may on changed prompts."""

    classes = {"shape": ("circle", "square")}

    def __init__(self, seed: int, rate: float):
        self.g, self.rate = torch.Generator().manual_seed(seed), rate

    def probs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        circle = (torch.rand(len(images), generator=self.g) < self.rate).float() * 0.8 + 0.1
        return {"shape": torch.stack([circle, 1 - circle], dim=1)}


class CountingJudge:
    """Wraps a judge and records how many images each call judged."""

    def __init__(self, judge):
        self.judge, self.classes, self.calls = judge, judge.classes, []

    def probs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls.append(len(images))
        return self.judge.probs(images)


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- ASR arithmetic


def test_asr_curves_per_restart_best_and_any_restart():
    success = torch.tensor(
        [
            [[1, 0, 0, 0], [1, 1, 0, 0]],  # restart 0: budget 1, budget 2 (already best so far)
            [[0, 0, 1, 0], [0, 0, 1, 0]],  # restart 1
        ],
        dtype=torch.bool,
    )
    assert asr_curves(success) == {"per_restart": [[25.0, 50.0], [25.0, 25.0]], "best": [25.0, 50.0], "any_restart": [50.0, 75.0]}


def test_asr_per_budget_is_best_so_far_for_every_judge_and_restart(tiny_pipe, tmp_path):
    """With judges whose verdicts come and go: per restart the curve never drops, `best`
    is the best restart, `any_restart` at least that; the CSVs' verdicts are the curves'
    last points; the headline is `best` at the largest budget."""
    budgets = [1, 2, 3, 4]
    base = stage_params()
    p = stage_params(
        **{name: {**vars(getattr(base, name)), "budgets": budgets} for name in ATTACKS}, restarts=3,
    )  # fmt: skip
    inputs = prepare_attacks(tiny_pipe, FakeJudge(), "circle", STAGE_PROMPTS, p, SEARCH)
    judges = {"a": RandomJudge(1, 0.3), "b": RandomJudge(2, 0.2)}
    metrics, _ = sweep_model(tiny_pipe, judges, "circle", inputs, p, tmp_path)
    changed = False
    for name in ATTACKS:
        sweep = metrics["sweep"][name]
        assert sweep["budgets"] == budgets
        for j in judges:
            per_restart = torch.tensor(sweep[j]["per_restart"])
            best, any_restart = torch.tensor(sweep[j]["best"]), torch.tensor(sweep[j]["any_restart"])
            assert per_restart.shape == (p.restarts, len(budgets))
            assert (per_restart[:, 1:] >= per_restart[:, :-1]).all(), f"{name} by {j}: a restart's ASR dropped"
            assert torch.equal(best, per_restart.max(0).values) and (best >= per_restart).all()
            assert (any_restart >= best).all() and (any_restart[1:] >= any_restart[:-1]).all()
            assert metrics["asr"][j][name] == sweep[j]["best"][-1]
            verdicts = []
            for restart in range(p.restarts):
                rows = read_rows(tmp_path / name / f"restart{restart}" / "prompts.csv")
                verdict = torch.tensor([r[f"is_concept_{j}"] == "True" for r in rows])
                assert 100.0 * verdict.double().mean().item() == pytest.approx(sweep[j]["per_restart"][restart][-1])
                verdicts.append(verdict)
            assert 100.0 * torch.stack(verdicts).any(0).double().mean().item() == pytest.approx(sweep[j]["any_restart"][-1])
            changed |= bool((per_restart[:, -1] > per_restart[:, 0]).any())
    assert changed, "no curve ever rose: the judges' verdicts did not vary, the test checks nothing"


# ---------------------------------------------------------------- reuse of the cheaper budgets


def test_sweep_runs_each_restart_once_and_skips_what_is_attacked(tiny_pipe, tmp_path, monkeypatch):
    """One optimisation per attack and restart for all budgets, and at each budget only the
    prompts not yet attacked by every judge are generated and judged again."""
    p = stage_params()
    judges = {"world": CountingJudge(FakeJudge()), "other": CountingJudge(PositionJudge([0]))}
    inputs = prepare_attacks(tiny_pipe, judges["world"], "circle", STAGE_PROMPTS, p, SEARCH)
    calls = {"ChunkSearch": 0, "invert_concept": 0, "genetic_search": 0}
    for module, fn in ((pez, "ChunkSearch"), (cce, "invert_concept"), (ring_a_bell, "genetic_search")):
        original = getattr(module, fn)

        def counted(*args, _fn=fn, _original=original, **kw):
            calls[_fn] += 1
            return _original(*args, **kw)

        monkeypatch.setattr(module, fn, counted)
    generated = []
    original_generate = sweep.generate

    def counting_generate(pipe, cond, *args, **kw):
        generated.append(len(cond))
        return original_generate(pipe, cond, *args, **kw)

    monkeypatch.setattr(sweep, "generate", counting_generate)
    for judge in judges.values():
        judge.calls.clear()
    metrics, _ = sweep_model(tiny_pipe, judges, "circle", inputs, p, tmp_path)
    # P4D and UnlearnDiff: one chunk (batch_size 4) per restart; CCE: one inversion per
    # restart; Ring-A-Bell was searched once in prepare_attacks.
    assert calls == {"ChunkSearch": 2 * p.restarts, "invert_concept": p.restarts, "genetic_search": 0}
    # Budget 1: all 4; then prompt 0 is attacked by both judges, prompts 1, 2 by "world"
    # only, so 3 are made again at budget 2. Per attack, per restart.
    assert generated == [4, 3] * p.restarts * len(ATTACKS)
    assert judges["world"].calls == judges["other"].calls == generated
    for name in ("cce", "p4d", "unlearndiff"):
        log = json.loads((tmp_path / name / "restart0" / "log.json").read_text())
        assert len(log["loss"]) == p.budgets(name)[-1]  # one run, to the largest budget
    assert metrics["asr"] == {"world": {a: 100.0 for a in ATTACKS}, "other": {a: 50.0 for a in ATTACKS}}


def test_a_prompt_attacked_by_every_judge_is_never_made_again(tiny_pipe, tmp_path, monkeypatch):
    """Judges that call every image the concept: nothing is left after the first budget."""
    p = stage_params(
        p4d=dict(tokens=4, budgets=[1, 2, 3], lr=0.05), unlearndiff=dict(prefix_tokens=2, budgets=[1, 2, 3], lr=0.05)
    )
    judges = {"world": PositionJudge(list(range(8))), "other": PositionJudge(list(range(8)))}
    inputs = prepare_attacks(tiny_pipe, judges["world"], "circle", STAGE_PROMPTS, p, SEARCH)
    generated = []
    original_generate = sweep.generate
    monkeypatch.setattr(sweep, "generate", lambda pipe, cond, *a, **kw: generated.append(len(cond)) or original_generate(pipe, cond, *a, **kw))
    metrics, images = sweep_model(tiny_pipe, judges, "circle", inputs, p, tmp_path)
    assert generated == [4] * p.restarts * len(ATTACKS)
    assert metrics["sweep"]["p4d"]["world"]["per_restart"] == [[100.0] * 3] * p.restarts
    assert all(im.shape == (4, 3, 32, 32) and im.abs().sum() > 0 for im in images.values())


def run_attack(name: str, pipe, x0, budgets: list[int], restart: int):
    """One attack at `budgets` on PROMPTS (two chunks where the attack chunks)."""
    if name == "p4d":
        return p4d_attack(pipe, PROMPTS, x0, P4DParams(tokens=4, budgets=budgets, lr=0.05), 0, 2, restart=restart)
    if name == "unlearndiff":
        return unlearndiff_attack(pipe, PROMPTS, x0, UnlearnDiffParams(prefix_tokens=2, budgets=budgets, lr=0.05), 0, 2, restart=restart)
    if name == "cce":
        return cce_attack(pipe, x0, 3, cce_params(budgets=budgets, lr=0.05, init_words=["photo", "red"]), 0, restart)
    allowed = vocabulary(pipe, PROMPTS + ["square star triangle"])
    return ring_a_bell_attack(pipe, PROMPTS, rab_params(budgets=budgets, init_from_prompt=False), 0, 2, allowed, restart)


def found(result) -> torch.Tensor:
    """What an attack found, as one tensor."""
    for key in ("ids", "tokens", "embedding"):
        if key in result.tensors:
            return result.tensors[key]
    raise KeyError(list(result.tensors))


@pytest.mark.parametrize("restart", [0, 1])
@pytest.mark.parametrize("name", ATTACKS)
def test_a_sweep_equals_separate_runs_at_each_budget(tiny_pipe, x0, name, restart):
    """The result at each budget of a sweep is what a run to that budget alone gives."""
    with_random_lora(tiny_pipe)
    sweep = run_attack(name, tiny_pipe, x0, [1, 3], restart)
    alone = {b: run_attack(name, tiny_pipe, x0, [b], restart)[0] for b in (1, 3)}
    assert len(sweep) == 2
    for result, budget in zip(sweep, (1, 3)):
        assert torch.equal(found(result), found(alone[budget]))
        assert torch.allclose(result.cond, alone[budget].cond, atol=1e-6) and result.prompts == alone[budget].prompts
    assert sweep[-1].log == alone[3].log
    assert not torch.equal(found(sweep[0]), found(sweep[1])), "nothing changed between the budgets: the test checks nothing"


# ---------------------------------------------------------------- restarts


@pytest.mark.parametrize("name", ATTACKS)
def test_restarts_differ_and_repeat(tiny_pipe, x0, name):
    with_random_lora(tiny_pipe)
    zero = run_attack(name, tiny_pipe, x0, [1, 2], 0)
    one = run_attack(name, tiny_pipe, x0, [1, 2], 1)
    again = run_attack(name, tiny_pipe, x0, [1, 2], 1)
    for a, b, c in zip(zero, one, again):
        assert not torch.equal(found(a), found(b)), "restart 1 found what restart 0 did"
        assert torch.equal(found(b), found(c)) and torch.allclose(b.cond, c.cond) and b.prompts == c.prompts
    assert one[-1].log == again[-1].log and one[-1].log != zero[-1].log


def test_restarts_in_a_sweep_are_the_attacks_restarts(tiny_pipe, tmp_path):
    """Restart k of the sweep is the attack run with restart=k: its files say so."""
    p = stage_params()
    judges = stage_judges()
    inputs = prepare_attacks(tiny_pipe, judges["world"], "circle", STAGE_PROMPTS, p, SEARCH)
    with_random_lora(tiny_pipe)
    sweep_model(tiny_pipe, judges, "circle", inputs, p, tmp_path)
    for restart in range(p.restarts):
        want = unlearndiff_attack(tiny_pipe, inputs.prompts, inputs.x0, p.unlearndiff, p.seed, p.batch_size, inputs.allowed, restart)
        rows = read_rows(tmp_path / "unlearndiff" / f"restart{restart}" / "prompts.csv")
        assert [r["token_ids"] for r in rows] == want[-1].columns["token_ids"]
    first, second = (read_rows(tmp_path / "p4d" / f"restart{k}" / "prompts.csv") for k in (0, 1))
    assert [r["token_ids"] for r in first] != [r["token_ids"] for r in second]
    # Ring-A-Bell's restarts come from the inputs, one search each.
    assert len(inputs.ring) == p.restarts and all(len(per_budget) == 2 for per_budget in inputs.ring)
    assert not torch.equal(inputs.ring[0][-1].tensors["tokens"], inputs.ring[1][-1].tensors["tokens"])


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "change, key",
    [
        (dict(cce=dict(budgets=[])), "attacks.cce.budgets"),
        (dict(cce=dict(budgets=[2, 2])), "attacks.cce.budgets"),
        (dict(cce=dict(budgets=[3, 1])), "attacks.cce.budgets"),
        (dict(cce=dict(budgets=[0, 1])), "attacks.cce.budgets"),
        (dict(p4d=dict(budgets=[])), "attacks.p4d.budgets"),
        (dict(p4d=dict(budgets=[4, 2])), "attacks.p4d.budgets"),
        (dict(unlearndiff=dict(budgets=[])), "attacks.unlearndiff.budgets"),
        (dict(unlearndiff=dict(budgets=[1, 1])), "attacks.unlearndiff.budgets"),
        (dict(ring_a_bell=dict(budgets=[])), "attacks.ring_a_bell.budgets"),
        (dict(ring_a_bell=dict(budgets=[5, 3])), "attacks.ring_a_bell.budgets"),
        (dict(ring_a_bell=dict(budgets=[-1])), "attacks.ring_a_bell.budgets"),
        (dict(restarts=0), "attacks.restarts"),
        (dict(restarts=-1), "attacks.restarts"),
        (dict(cce=dict(tokens=0)), "attacks.cce.tokens"),
        (dict(cce=dict(tokens=9)), "attacks.cce.tokens"),
        (dict(cce=dict(init_words=[])), "attacks.cce.init_words"),
        (dict(cce=dict(init_words=["photo", " "])), "attacks.cce.init_words"),
    ],
)
def test_bad_budgets_restarts_and_tokens_name_the_key(change, key):
    base = stage_params()
    merged = {}
    for section, value in change.items():
        merged[section] = {**vars(getattr(base, section)), **value} if isinstance(value, dict) else value
    with pytest.raises(ParamsError, match=key):
        stage_params(**merged)


def test_good_budgets_and_tokens_parse():
    base = stage_params()
    p = stage_params(cce={**vars(base.cce), "tokens": 8, "budgets": [1, 5, 100]}, restarts=1)
    assert p.cce.tokens == 8 and p.budgets("cce") == [1, 5, 100] and p.restarts == 1


# ---------------------------------------------------------------- the base side, saved


def test_inputs_are_saved_and_read_back_only_with_the_same_key(tiny_pipe, tmp_path):
    p = stage_params()
    inputs = prepare_attacks(tiny_pipe, FakeJudge(), "circle", STAGE_PROMPTS, p, SEARCH)
    assert isinstance(inputs, AttackInputs)
    assert len(inputs.ring) == p.restarts and [len(r) for r in inputs.ring] == [2] * p.restarts
    path = tmp_path / "base" / "inputs.safetensors"
    with pytest.raises(FileNotFoundError, match="run `dvc repro attack_base` first"):
        load_inputs(path, "k1")
    save_inputs(inputs, path, "k1")
    loaded = load_inputs(path, "k1")
    assert loaded.prompts == inputs.prompts and loaded.seconds == inputs.seconds
    for key in ("x0", "noise", "concept_latents", "allowed"):
        assert torch.equal(getattr(loaded, key), getattr(inputs, key)), key
    assert loaded.allowed.dtype == torch.bool
    assert len(loaded.ring) == len(inputs.ring)
    for got_restart, want_restart in zip(loaded.ring, inputs.ring):
        assert len(got_restart) == len(want_restart)
        for got, want in zip(got_restart, want_restart):
            assert got.prompts == want.prompts and got.columns == want.columns
            assert torch.equal(got.cond, want.cond)
            assert torch.equal(got.tensors["tokens"], want.tensors["tokens"])
            assert torch.equal(got.tensors["concept_vector"], want.tensors["concept_vector"])
    assert loaded.ring[0][0].log == inputs.ring[0][0].log
    with pytest.raises(ParamsError, match="made with other settings"):
        load_inputs(path, "k2")


def test_saved_inputs_keep_each_restarts_fitness_log(tiny_pipe, tmp_path):
    """Each restart's Ring-A-Bell log (written to ring_a_bell/restart{k}/log.json by the
    erased models' stages) should come back as it was."""
    p = stage_params()
    inputs = prepare_attacks(tiny_pipe, FakeJudge(), "circle", STAGE_PROMPTS, p, SEARCH)
    assert inputs.ring[0][-1].log != inputs.ring[1][-1].log
    save_inputs(inputs, tmp_path / "inputs.safetensors", "k")
    loaded = load_inputs(tmp_path / "inputs.safetensors", "k")
    assert [r[-1].log for r in loaded.ring] == [r[-1].log for r in inputs.ring]


def test_a_sweep_from_saved_inputs_is_the_same(tiny_pipe, tmp_path):
    """What the erased models' stages measure from the saved inputs is what the base
    stage measured from the fresh ones (Ring-A-Bell, which comes wholly from them)."""
    p = stage_params()
    judges = {"a": ContentJudge(997.0), "b": PositionJudge([0])}
    inputs = prepare_attacks(tiny_pipe, judges["b"], "circle", STAGE_PROMPTS, p, SEARCH)
    save_inputs(inputs, tmp_path / "inputs.safetensors", "k")
    loaded = load_inputs(tmp_path / "inputs.safetensors", "k")
    a, _ = sweep.sweep_attack("ring_a_bell", tiny_pipe, judges, "circle", inputs, p, tmp_path / "fresh")
    b, _ = sweep.sweep_attack("ring_a_bell", tiny_pipe, judges, "circle", loaded, p, tmp_path / "loaded")
    assert a == b
    for restart in range(p.restarts):
        rel = Path("ring_a_bell") / f"restart{restart}" / "prompts.csv"
        # Compared as rows: the column order differs (the saved columns come back key-sorted).
        assert read_rows(tmp_path / "fresh" / rel) == read_rows(tmp_path / "loaded" / rel)


# ---------------------------------------------------------------- small helpers


def test_budget_plot_rows_and_disagreements():
    def metrics(value: float) -> dict:
        curve = {"per_restart": [[value, value]], "best": [value / 2, value], "any_restart": [value, value]}
        return {"sweep": {a: {"budgets": [10, 20], "world": curve, "geometric": curve} for a in ATTACKS}}

    rows = budget_plot_rows(metrics(80.0), metrics(10.0), ["world", "geometric"])
    assert list(rows) == list(ATTACKS)
    assert rows["p4d"] == [
        {"budget": 10, "base_world": 40.0, "base_geometric": 40.0, "erased_world": 5.0, "erased_geometric": 5.0},
        {"budget": 20, "base_world": 80.0, "base_geometric": 80.0, "erased_world": 10.0, "erased_geometric": 10.0},
    ]
    asr = {"world": {"cce": 50.0, "p4d": 10.0, "unlearndiff": 0.0, "ring_a_bell": 30.0},
           "geometric": {"cce": 56.0, "p4d": 14.0, "unlearndiff": 0.0, "ring_a_bell": 35.0}}  # fmt: skip
    assert disagreements(asr) == ["cce: world 50.0 vs geometric 56.0"]


def test_search_texts_are_the_prompt_files_words_or_the_vocabulary(tmp_path):
    write_prompts(["a red circle", "a ball"], tmp_path / "circle.csv")
    write_prompts(["a blue box"], tmp_path / "others_circle.csv")
    assert search_texts_for(stage_params(search_space="prompts"), tmp_path) == ["a red circle", "a ball", "a blue box"]
    assert search_texts_for(stage_params(search_space="vocabulary"), tmp_path) is None
