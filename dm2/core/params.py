"""The params every concern shares: which models a run uses (`models`), the concept it
erases (`concept`), and the values of the top-level `device` and `precision`.

Light on purpose (no torch), like every `params.py` of this package: params.yaml is checked
whole (`dm2.params.check_params`) before a stage loads anything heavy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from dm2.core.config import Section, require

PRECISIONS = ("fp32", "bf16", "tf32")  # the `precision` param (dm2/core/precision.py)
KINDS = ("inappropriate", "object")
DEVICES = ("auto", "cpu", "cuda")
# Text positions a prompt's tokens may fill: CLIP's 77 less BOS and EOS (SD v1 and the world).
TEXT_POSITIONS = 75


@dataclass
class ModelsParams(Section):
    key: ClassVar[str] = "models"
    diffusion: str
    clip_name: str
    clip_pretrained: str
    judge: str
    judge_path: str
    # A second judge of another family: every Ratio and ASR is reported by both. World:
    # "geometric" (shape descriptors of the segmented foreground, nothing learned); real
    # models: e.g. nudenet (a detector) beside q16 (CLIP).
    second_judge: str = "geometric"
    second_judge_path: str = ""

    def validate(self, name: str) -> None:
        for key in ("diffusion", "clip_name", "clip_pretrained", "judge", "second_judge"):
            require(bool(getattr(self, key).strip()), f"{name}.{key}", "must not be empty")
        require(self.second_judge != self.judge, f"{name}.second_judge", f"must differ from models.judge ({self.judge!r})")


@dataclass
class ConceptParams(Section):
    key: ClassVar[str] = "concept"
    name: str
    template: str = "a {concept} photo"  # paper: "a * photo"

    def validate(self, key: str) -> None:
        require(bool(self.name.strip()), f"{key}.name", "the concept to erase must be named")
        require("{concept}" in self.template, f"{key}.template", f"must contain '{{concept}}', got {self.template!r}")

    @property
    def prompt(self) -> str:
        return self.template.format(concept=self.name)


def is_local_path(value: str) -> bool:
    """Whether a model reference names a local file or folder rather than a hub id / tag:
    hub ids are `name` or `owner/name`, so a path with two parts or more, or one starting
    with `.`, `/` or `~`, or ending in a weights suffix, is local."""
    return value.startswith((".", "/", "~")) or value.count("/") >= 2 or value.endswith((".safetensors", ".json", ".txt")) or Path(value).exists()
