"""Evaluation prompts: determinism, synonym share, vocabulary, variety, CSV round trips,
and the prompts stage."""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

import pytest

from dm2.core.config import load_params, parse_section
from dm2.world.params import PromptsParams, WorldParams
from dm2.world.prompts import normal_prompts, other_prompts, read_prompts, uses_name, write_prompts
from dm2.world.render import BACKGROUNDS, COLOURS, TEMPLATES, TEXTURE_WORDS, WorldSpec
from stages.prompts import write_prompt_files

SPEC = WorldSpec()
ROOT = Path(__file__).resolve().parents[1]
# Words a prompt may use beyond the world's own: neutral context, no shape meaning.
NEUTRAL = {
    "an", "close-up", "image", "showing", "in", "front", "small", "large", "illustration", "sketch",
    "the", "middle", "painting", "one", "that", "is", "and", "with", "simple", "centered",
}  # fmt: skip


def words(prompt: str) -> list[str]:
    return re.findall(r"[\w-]+", prompt)


def skeleton(prompt: str) -> str:
    """The prompt's template: world words replaced by their placeholders."""
    slots = {w: "{colour}" for w in COLOURS} | {w: "{background}" for w in BACKGROUNDS}
    slots |= {w: "{texture}" for ws in TEXTURE_WORDS.values() for w in ws}
    slots |= {w: "{shape}" for ws in SPEC.synonyms.values() for w in ws}
    skel = " ".join(slots.get(w, w) for w in prompt.replace(",", " ,").split())
    return skel.replace(" ,", ",")


def test_normal_prompts_are_deterministic_and_distinct():
    a = normal_prompts(SPEC, "circle", 120, seed=0)
    assert a == normal_prompts(SPEC, "circle", 120, seed=0)
    assert a != normal_prompts(SPEC, "circle", 120, seed=1)
    assert len(set(a)) == 120


@pytest.mark.parametrize("shape", SPEC.shapes)
def test_normal_prompts_mostly_use_synonyms(shape):
    prompts = normal_prompts(SPEC, shape, 120, seed=0)
    by_name = sum(uses_name(p, shape) for p in prompts)
    assert 0 < by_name <= 120 / 3
    synonyms = Counter(w for p in prompts for w in words(p) if w in SPEC.synonyms[shape] and w != shape)
    assert set(synonyms) == set(SPEC.synonyms[shape]) - {shape}  # every synonym is used


@pytest.mark.parametrize("shape", SPEC.shapes)
def test_normal_prompts_use_known_words_and_one_shape_word(shape):
    vocabulary = {w for t in TEMPLATES for w in words(re.sub(r"\{\w+\}", " ", t))}  # template words
    vocabulary |= set(COLOURS) | set(BACKGROUNDS) | {w for ws in TEXTURE_WORDS.values() for w in ws}
    shape_words = {w: s for s, ws in SPEC.synonyms.items() for w in ws}
    for prompt in normal_prompts(SPEC, shape, 120, seed=0):
        ws = words(prompt)
        assert set(ws) <= vocabulary | NEUTRAL | set(shape_words), prompt
        assert [shape_words[w] for w in ws if w in shape_words] == [shape], prompt


def test_normal_prompts_go_beyond_training_templates():
    prompts = normal_prompts(SPEC, "circle", 120, seed=0)
    skeletons = Counter(skeleton(p) for p in prompts)
    new = {s: k for s, k in skeletons.items() if s not in TEMPLATES}
    assert len(new) >= 8
    assert sum(new.values()) >= len(prompts) / 3
    contexts = [{w for w in words(p) if w in COLOURS or w in BACKGROUNDS} for p in prompts]
    assert set().union(*contexts) == set(COLOURS) | set(BACKGROUNDS)


def test_normal_prompts_follow_the_world_spec():
    spec = WorldSpec(synonyms={"circle": ("ball", "disk"), "star": ("star", "sparkle")}, colours=("red",))
    prompts = normal_prompts(spec, "circle", 40, seed=0)
    assert not any(uses_name(p, "circle") for p in prompts)  # the name is not a world word here
    assert not {c for p in prompts for c in words(p) if c in COLOURS} - {"red"}


def test_normal_prompts_errors():
    with pytest.raises(ValueError, match="unknown shape 'hexagon'"):
        normal_prompts(SPEC, "hexagon", 10, seed=0)
    tiny = WorldSpec(synonyms={"circle": ("circle", "ball")}, colours=("red",), backgrounds=("black",), textures=("striped",))
    with pytest.raises(ValueError, match="distinct prompts, lower n"):
        normal_prompts(tiny, "circle", 1000, seed=0)


def test_other_prompts_are_balanced_and_exclude_the_concept():
    pairs = other_prompts(SPEC, "circle", 10, seed=0)
    assert pairs == other_prompts(SPEC, "circle", 10, seed=0)
    counts = Counter(s for _, s in pairs)
    assert set(counts) == {"square", "triangle", "star", "cross"}
    assert sorted(counts.values()) == [2, 2, 3, 3]
    for prompt, shape in pairs:
        ws = set(words(prompt))
        assert ws & set(SPEC.synonyms[shape]) and not ws & set(SPEC.synonyms["circle"]), prompt
    assert len({p for p, _ in other_prompts(SPEC, "circle", 100, seed=0)}) == 100
    with pytest.raises(ValueError, match="unknown concept 'hexagon'"):
        other_prompts(SPEC, "hexagon", 10, seed=0)


def test_csv_round_trip_with_extra_columns(tmp_path):
    path = tmp_path / "sub" / "p.csv"
    prompts = ["a red ball", 'a "quoted", comma prompt']
    write_prompts(prompts, path, {"uses_name": [False, True]})
    assert read_prompts(path) == prompts
    with path.open(newline="") as f:
        assert list(csv.DictReader(f)) == [
            {"prompt": "a red ball", "uses_name": "False"},
            {"prompt": 'a "quoted", comma prompt', "uses_name": "True"},
        ]
    with pytest.raises(ValueError, match="extra column 'shape': 1 values for 2 prompts"):
        write_prompts(prompts, path, {"shape": ["star"]})


def test_read_prompts_errors(tmp_path):
    missing = tmp_path / "missing.csv"
    with pytest.raises(FileNotFoundError, match=re.escape(f"{missing}: prompts file not found")):
        read_prompts(missing)
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("text,seed\na ball,1\n")
    with pytest.raises(ValueError, match=re.escape(f"{wrong}: no 'prompt' column; columns: ['text', 'seed']")):
        read_prompts(wrong)
    empty = tmp_path / "empty.csv"
    empty.write_text("prompt,seed\n")
    with pytest.raises(ValueError, match=re.escape(f"{empty}: no prompts")):
        read_prompts(empty)
    blank = tmp_path / "blank.csv"
    blank.write_text("")
    with pytest.raises(ValueError, match=re.escape(f"{blank}: no 'prompt' column; columns: []")):
        read_prompts(blank)


def test_stage_writes_both_files_per_shape(tmp_path):
    paths = write_prompt_files(SPEC, PromptsParams(n_normal=12, n_other=8, seed=0), tmp_path)
    assert sorted(p.name for p in paths) == sorted([f"{s}.csv" for s in SPEC.shapes] + [f"others_{s}.csv" for s in SPEC.shapes])
    with (tmp_path / "star.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["prompt"] for r in rows] == normal_prompts(SPEC, "star", 12, seed=0)
    assert [r["uses_name"] for r in rows] == [str(" star" in f" {r['prompt']} ") for r in rows]
    with (tmp_path / "others_star.csv").open(newline="") as f:
        others = list(csv.DictReader(f))
    assert len(others) == 8 and {r["shape"] for r in others} == {"circle", "square", "triangle", "cross"}


def test_params_prompts_section_parses():
    params = load_params(ROOT / "params.yaml")
    p = parse_section(PromptsParams, params["prompts"], "prompts")
    assert p.n_normal >= 100
    parse_section(WorldParams, params["world"], "world")
