"""params.yaml as a whole: its sections, each a dataclass of the concern it configures
(`dm2/*/params.py`), and `check_params`, which parses every section and then runs the
checks across sections.

Nothing here imports torch, diffusers or transformers, so the whole file is read and
checked in well under a second, before a stage loads anything heavy; `SECTIONS` is the one
map from section name to class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dm2.attacks.params import AttacksParams
from dm2.core.config import parse_section, require, template_fields
from dm2.core.params import DEVICES, PRECISIONS, TEXT_POSITIONS, ConceptParams, ModelsParams, is_local_path
from dm2.core.paths import PROMPTS_DIR
from dm2.erasure.params import BaselinesParams, CircumventParams, EraseParams, MineParams, PoolParams, VerifyParams, check_method
from dm2.measure.params import CompareParams, EvaluateParams
from dm2.world.params import (
    ClipTrainParams,
    JudgeTrainParams,
    PromptsParams,
    UnetParams,
    VaeParams,
    WorldCheckParams,
    WorldParams,
)

# params.yaml's top level: sections (mappings) and the two scalars.
SECTIONS: dict[str, type] = {
    "world": WorldParams,
    "train_vae": VaeParams,
    "train_unet": UnetParams,
    "train_clip": ClipTrainParams,
    "train_judge": JudgeTrainParams,
    "models": ModelsParams,
    "world_check": WorldCheckParams,
    "concept": ConceptParams,
    "pool": PoolParams,
    "erase": EraseParams,
    "mine": MineParams,
    "verify": VerifyParams,
    "circumvent": CircumventParams,
    "baselines": BaselinesParams,
    "compare": CompareParams,
    "prompts": PromptsParams,
    "evaluate": EvaluateParams,
    "attacks": AttacksParams,
}
SCALARS = ("method", "device", "precision", "cpu_processes")


def _check_models(m: ModelsParams, root: Path, made: tuple[str, ...] = ()) -> None:
    if is_local_path(m.diffusion) and "diffusion" not in made:
        folder = root / Path(m.diffusion).expanduser()
        require((folder / "model_index.json").is_file(), "models.diffusion", f"{m.diffusion} is not a diffusers pipeline folder (no model_index.json)")
    if is_local_path(m.clip_pretrained) and "clip_pretrained" not in made:
        require((root / Path(m.clip_pretrained).expanduser()).is_file(), "models.clip_pretrained", f"{m.clip_pretrained} does not exist")
        require(
            m.clip_pretrained.endswith(".safetensors"), "models.clip_pretrained", f"{m.clip_pretrained}: weights load as safetensors only (never unpickled)"
        )
    for key in ("judge_path", "second_judge_path"):
        value = getattr(m, key)
        if value and key not in made:
            require((root / Path(value).expanduser()).exists(), f"models.{key}", f"{value} does not exist")


def _check_concept(concept: ConceptParams, world: WorldParams, root: Path) -> None:
    fields = template_fields(concept.template)
    require(fields == {"concept"}, "concept.template", f"may use only '{{concept}}', got fields {sorted(fields)}")
    if concept.name not in world.synonyms:
        prompts = root / PROMPTS_DIR / f"{concept.name}.csv"
        require(
            prompts.is_file(),
            "concept.name",
            f"{concept.name!r} is not a world shape ({', '.join(world.synonyms)}) and {PROMPTS_DIR / prompts.name} does not exist; "
            "real concepts bring their own prompt files (docs/real-models.md)",
        )


def _check_text_positions(s: dict[str, Any]) -> None:
    counts = {
        "mine.tokens": s["mine"].tokens + len(s["mine"].template.replace("{c}", " ").split()),  # at least a token per word
        "attacks.p4d.tokens": s["attacks"].p4d.tokens,
        "attacks.unlearndiff.prefix_tokens": s["attacks"].unlearndiff.prefix_tokens,
        "attacks.ring_a_bell.tokens": s["attacks"].ring_a_bell.tokens,
        "baselines.learnable_prompts.tokens": s["baselines"].learnable_prompts.tokens,
    }
    for key, n in counts.items():
        require(n <= TEXT_POSITIONS, key, f"{n} tokens do not fit the text encoder's {TEXT_POSITIONS} text positions (77 less BOS and EOS)")


def _check_pool(mine: MineParams, pool: PoolParams) -> None:
    # Each mining step draws k pool images: a pool smaller than k would fail only once the
    # models have loaded, so it is refused here with the two keys it involves.
    require(mine.k <= pool.size, "mine.k", f"mining draws k = {mine.k} pool images, but pool.size is {pool.size}")


def check_params(data: dict[str, Any], root: str | Path = ".", made: tuple[str, ...] = ()) -> dict[str, Any]:
    """Every section of params.yaml parsed, then the checks across sections; the first
    problem is a ParamsError naming its key. `root`: where relative paths start; `made`:
    the `models` keys whose files the running stage writes, so they need not exist yet
    (`dvc repro` deletes a stage's outputs before running it)."""
    root = Path(root)
    unknown = sorted(set(data) - set(SECTIONS) - set(SCALARS))
    require(not unknown, "top level", f"unknown section(s) {unknown}; known: {sorted([*SECTIONS, *SCALARS])}")
    missing = [k for k in (*SECTIONS, *SCALARS) if k not in data]
    require(not missing, "top level", f"missing section(s) {missing}")
    sections: dict[str, Any] = {name: parse_section(cls, data[name], name) for name, cls in SECTIONS.items()}
    require(isinstance(data["method"], str), "method", f"expected a method name, got {data['method']!r}")
    check_method(data["method"])
    require(data["device"] in DEVICES, "device", f"{data['device']!r} is not one of {list(DEVICES)}")
    require(data["precision"] in PRECISIONS, "precision", f"{data['precision']!r} is not one of {list(PRECISIONS)}")
    n = data["cpu_processes"]
    require(isinstance(n, int) and not isinstance(n, bool) and n >= 1, "cpu_processes", f"expected a whole number >= 1, got {n!r}")
    sections.update(method=data["method"], device=data["device"], precision=data["precision"], cpu_processes=n)
    _check_models(sections["models"], root, made)
    _check_concept(sections["concept"], sections["world"], root)
    _check_text_positions(sections)
    _check_pool(sections["mine"], sections["pool"])
    return sections
