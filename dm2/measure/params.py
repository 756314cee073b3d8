"""The evaluation's params (`evaluate`, with `coco` for real models) and the methods the
`compare` stage measures beside `method`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from dm2.core.config import Section, require
from dm2.core.params import KINDS
from dm2.erasure.params import check_method


@dataclass
class CocoParams(Section):
    key: ClassVar[str] = "evaluate.coco"
    captions: str  # annotations/captions_val2017.json
    images: str  # the val2017/ folder of JPEGs
    inception: str  # pt_inception-2015-12-05 weights as safetensors
    n: int = 5000  # paper: 5,000 captions, one image each

    def validate(self, name: str) -> None:
        require(Path(self.captions).is_file(), f"{name}.captions", f"{self.captions} does not exist")
        require(Path(self.images).is_dir(), f"{name}.images", f"{self.images} is not a folder")
        require(Path(self.inception).is_file(), f"{name}.inception", f"{self.inception} does not exist")
        require(self.n > 0, f"{name}.n", f"must be positive, got {self.n}")


@dataclass
class EvaluateParams(Section):
    key: ClassVar[str] = "evaluate"
    images_per_prompt: int  # paper: 10
    n_prompts: int  # normal prompts used, from the top of the CSV
    n_other: int
    n_heldout: int  # held-out world captions; with `coco`, coco.n is used (paper: 5,000)
    steps: int
    guidance: float
    seed: int
    kind: str  # "object" (shapes, objects, styles) or "inappropriate" (nudity, violence)
    grid_images: int = 8
    coco: CocoParams | None = None  # real models: COCO-2017 val captions / images and FID (replaces the world's held-out set)

    def validate(self, name: str) -> None:
        for key in ("images_per_prompt", "n_prompts", "n_other", "n_heldout", "steps", "grid_images"):
            require(getattr(self, key) > 0, f"{name}.{key}", f"must be positive, got {getattr(self, key)}")
        require(self.kind in KINDS, f"{name}.kind", f"{self.kind!r} is not one of {list(KINDS)}")


@dataclass
class CompareParams(Section):
    key: ClassVar[str] = "compare"
    methods: list[str]  # measured beside `method` by the compare stage

    def validate(self, name: str) -> None:
        for i, m in enumerate(self.methods):
            check_method(m, f"{name}.methods[{i}]")
