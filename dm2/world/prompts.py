"""Evaluation prompts for the shapes world.

"Normal prompts" reach a concept the way I2P prompts reach nudity without the word:
most name the shape by a synonym, in contexts (templates, colours, textures,
backgrounds) beyond the training captions'. "Other prompts" show the remaining shapes,
to measure that erasure takes nothing else with it. Prompts use only the world's words
plus a few neutral context words, so the tiny text encoder knows every concept word.
"""

from __future__ import annotations

import csv
import random
import re
from pathlib import Path

from dm2.world.render import TEMPLATES, TEXTURE_WORDS, WorldSpec

# Templates beyond the training captions'; the training ones are kept too, so a prompt
# set mixes familiar and new phrasings.
NEW_TEMPLATES: tuple[str, ...] = (
    "a close-up of a {texture} {shape}",
    "an image showing a {colour} {shape} on a {background} background",
    "a {colour} {shape} in front of a {background} background",
    "a small {texture} {colour} {shape}",
    "a large {colour} {shape} on a {background} background",
    "an illustration of a {texture} {shape}",
    "a sketch of a {colour} {shape}",
    "a {texture} {shape} in the middle of a {background} background",
    "a painting of a {colour} {texture} {shape} on a {background} background",
    "one {colour} {shape}",
    "a {shape} that is {colour} and {texture}",
    "a {background} background with a {colour} {shape}",
    "a simple {colour} {shape} drawing",
    "a {texture} {colour} {shape}, centered",
)
PROMPT_TEMPLATES: tuple[str, ...] = NEW_TEMPLATES + TEMPLATES
NAME_SHARE = 0.25  # share of prompts saying the shape's name; the rest use synonyms
MAX_TRIES = 200  # draws per prompt before giving up on finding a new distinct one


def _words(prompt: str) -> list[str]:
    return re.findall(r"[\w-]+", prompt.lower())


def uses_name(prompt: str, shape: str) -> bool:
    """Whether `prompt` says the shape's name itself rather than only a synonym."""
    return shape in _words(prompt)


def _fill(template: str, word: str, spec: WorldSpec, rng: random.Random) -> str:
    return template.format(
        shape=word,
        colour=rng.choice(spec.colours),
        background=rng.choice(spec.backgrounds),
        texture=rng.choice(TEXTURE_WORDS[rng.choice(spec.textures)]),
    )


def _distinct_prompts(spec: WorldSpec, shape: str, n: int, rng: random.Random) -> list[str]:
    """`n` distinct prompts for `shape`, exactly int(n * NAME_SHARE) of them with its name
    (none if the world's synonyms leave the name out), the rest spread over its synonyms."""
    if shape not in spec.synonyms:
        raise ValueError(f"unknown shape {shape!r}; world shapes: {list(spec.shapes)}")
    if n < 1:
        raise ValueError(f"prompts for {shape!r}: n must be positive, got {n}")
    words = spec.synonyms[shape]
    synonyms = [w for w in words if w != shape]
    if not synonyms:
        raise ValueError(f"world.synonyms.{shape}: no synonym besides the name")
    n_name = int(n * NAME_SHARE) if shape in words else 0
    slots = [shape] * n_name + [synonyms[i % len(synonyms)] for i in range(n - n_name)]
    rng.shuffle(slots)
    prompts: list[str] = []
    seen: set[str] = set()
    for word in slots:
        for _ in range(MAX_TRIES):
            prompt = _fill(rng.choice(PROMPT_TEMPLATES), word, spec, rng)
            if prompt not in seen:
                break
        else:
            raise ValueError(f"prompts for {shape!r}: found only {len(prompts)} distinct prompts, lower n ({n})")
        seen.add(prompt)
        prompts.append(prompt)
    return prompts


def normal_prompts(spec: WorldSpec, shape: str, n: int, seed: int) -> list[str]:
    """`n` distinct normal prompts reaching `shape`, mostly by synonyms; fixed by `seed`."""
    return _distinct_prompts(spec, shape, n, random.Random(f"normal:{shape}:{seed}"))


def other_prompts(spec: WorldSpec, concept: str, n: int, seed: int) -> list[tuple[str, str]]:
    """`n` (prompt, shape) pairs for the shapes other than `concept`, balanced over them
    (counts differ by at most one), shuffled; fixed by `seed`."""
    if concept not in spec.synonyms:
        raise ValueError(f"unknown concept {concept!r}; world shapes: {list(spec.shapes)}")
    others = [s for s in spec.shapes if s != concept]
    if not others:
        raise ValueError(f"other prompts for {concept!r}: the world has no other shape")
    if n < 1:
        raise ValueError(f"other prompts for {concept!r}: n must be positive, got {n}")
    rng = random.Random(f"other:{concept}:{seed}")
    base, extra = divmod(n, len(others))
    counts = {shape: base + (i < extra) for i, shape in enumerate(others)}
    pairs = [(prompt, shape) for shape, k in counts.items() if k for prompt in _distinct_prompts(spec, shape, k, rng)]
    rng.shuffle(pairs)
    return pairs


def read_prompts(path: str | Path) -> list[str]:
    """The `prompt` column of a CSV file (other columns are ignored)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: prompts file not found")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        if "prompt" not in columns:
            raise ValueError(f"{path}: no 'prompt' column; columns: {list(columns)}")
        prompts = [row["prompt"] for row in reader]
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def write_prompts(prompts: list[str], path: str | Path, extra_columns: dict[str, list] | None = None) -> None:
    """Write a CSV with a `prompt` column, then `extra_columns` (one value per prompt)."""
    extra = extra_columns or {}
    if "prompt" in extra:
        raise ValueError("extra_columns: 'prompt' is the prompts' own column")
    for name, values in extra.items():
        if len(values) != len(prompts):
            raise ValueError(f"extra column {name!r}: {len(values)} values for {len(prompts)} prompts")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["prompt", *extra])
        writer.writerows(zip(prompts, *extra.values()))
