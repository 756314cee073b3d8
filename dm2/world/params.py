"""The world's params: what it renders (`world`), how its three models are trained
(`train_vae`, `train_unet`, `train_clip`, `train_judge`), how it is checked (`world_check`)
and its prompt sets (`prompts`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from dm2.core.config import ParamsError, Section, require
from dm2.world.render import DEFAULT_SYNONYMS, IMAGE_SIZE, TEXTURE_PERIOD, WorldSpec


@dataclass
class WorldParams(Section):
    key: ClassVar[str] = "world"
    seed: int = 0
    train_images: int = 20000
    heldout_images: int = 2000
    synonyms: dict[str, list[str]] = field(default_factory=lambda: {k: list(v) for k, v in DEFAULT_SYNONYMS.items()})
    colours: list[str] = field(default_factory=list)
    backgrounds: list[str] = field(default_factory=list)
    textures: list[str] = field(default_factory=list)
    empty_fraction: float = 0.0  # share of background-only images captioned "a photo" etc.
    texture_period: int = TEXTURE_PERIOD  # pixels from one stripe (or dot) to the next

    def validate(self, name: str) -> None:
        require(self.train_images > 0, f"{name}.train_images", "must be positive")
        require(self.heldout_images > 0, f"{name}.heldout_images", "must be positive")
        try:
            self.spec()
        except ValueError as e:
            raise ParamsError(str(e)) from None

    def spec(self) -> WorldSpec:
        return WorldSpec(
            synonyms={k: tuple(v) for k, v in self.synonyms.items()},
            colours=tuple(self.colours),
            backgrounds=tuple(self.backgrounds),
            textures=tuple(self.textures),
            empty_fraction=self.empty_fraction,
            texture_period=self.texture_period,
        )


@dataclass
class TrainParams(Section):
    steps: int
    batch_size: int
    lr: float

    def validate(self, name: str) -> None:
        require(self.steps > 0, f"{name}.steps", "must be positive")
        require(self.batch_size > 0, f"{name}.batch_size", "must be positive")
        require(self.lr > 0, f"{name}.lr", "must be positive")


@dataclass
class VaeParams(TrainParams):
    key: ClassVar[str] = "train_vae"
    kl_weight: float = 1e-4


@dataclass
class UnetParams(TrainParams):
    key: ClassVar[str] = "train_unet"
    caption_dropout: float = 0.1
    channels: list[int] = field(default_factory=lambda: [64, 128])

    def validate(self, name: str) -> None:
        super().validate(name)
        require(0.0 <= self.caption_dropout < 1.0, f"{name}.caption_dropout", "must be in [0, 1)")


@dataclass
class AugmentParams(Section):
    key: ClassVar[str] = "augment"
    shift: float = 0.08  # max translation, as a fraction of the image side
    blur: float = 1.0  # max gaussian blur sigma in pixels
    noise: float = 0.05  # max std of additive gaussian noise
    jitter: float = 0.08  # max per-channel gain change and brightness offset

    def validate(self, name: str) -> None:
        for key in ("shift", "blur", "noise", "jitter"):
            require(getattr(self, key) >= 0, f"{name}.{key}", "must be >= 0")


@dataclass
class ClipTrainParams(TrainParams):
    key: ClassVar[str] = "train_clip"
    augment: AugmentParams = field(default_factory=AugmentParams)


@dataclass(frozen=True)
class HardRanges(Section):
    """How hard the renders get; each image draws uniformly inside every range."""

    key: ClassVar[str] = "hard"

    contrast: tuple[float, float] = (0.25, 1.0)  # fraction of the world's shape-to-background colour distance
    canvas: tuple[int, int] = (10, 32)  # side of the canvas the shape is drawn on (10 px: ~6 px across)
    blur: tuple[float, float] = (0.0, 1.5)  # gaussian sigma, pixels
    noise: tuple[float, float] = (0.0, 0.08)  # std of additive gaussian noise, images in [0, 1]
    empty_fraction: float = 0.15  # background-only images (with the same blur and noise)

    def validate(self, name: str) -> None:
        for key in ("contrast", "canvas", "blur", "noise"):
            pair = getattr(self, key)
            require(len(pair) == 2, f"{name}.{key}", f"must be a [low, high] pair, got {list(pair)}")
            low, high = pair
            require(0 <= low <= high, f"{name}.{key}", f"must be an increasing pair of non-negative numbers, got {[low, high]}")
        require(self.contrast[1] <= 1.0, f"{name}.contrast", "must not exceed 1")
        require(4 <= self.canvas[0] and self.canvas[1] <= IMAGE_SIZE, f"{name}.canvas", f"must lie in [4, {IMAGE_SIZE}]")
        require(0 <= self.empty_fraction < 1, f"{name}.empty_fraction", "must be in [0, 1)")


@dataclass
class JudgeTrainParams(TrainParams):
    key: ClassVar[str] = "train_judge"
    width: int = 32
    augment: AugmentParams = field(default_factory=AugmentParams)
    hard_images: int = 0  # hard renders added to the world's training images
    hard: HardRanges = field(default_factory=HardRanges)

    def validate(self, name: str) -> None:
        super().validate(name)
        require(self.hard_images >= 0, f"{name}.hard_images", f"must be >= 0, got {self.hard_images}")
        require(self.width > 0 and self.width % 8 == 0, f"{name}.width", "must be a positive multiple of 8 (GroupNorm groups)")


@dataclass
class WorldCheckParams(Section):
    key: ClassVar[str] = "world_check"
    images_per_prompt: int
    steps: int
    guidance: float
    seed: int
    hard_images: int = 3000  # held-out hard renders
    hard: HardRanges = field(default_factory=HardRanges)
    min_drawn: float = 0.9  # share of its images in which the model must draw each asked shape and texture

    def validate(self, name: str) -> None:
        require(self.hard_images > 0, f"{name}.hard_images", "must be positive")
        require(0.0 <= self.min_drawn <= 1.0, f"{name}.min_drawn", f"must be in [0, 1], got {self.min_drawn}")
        require(self.images_per_prompt > 0, f"{name}.images_per_prompt", "must be positive")
        require(self.steps > 0, f"{name}.steps", "must be positive")


@dataclass
class PromptsParams(Section):
    key: ClassVar[str] = "prompts"
    n_normal: int
    n_other: int
    seed: int

    def validate(self, name: str) -> None:
        require(self.n_normal > 0, f"{name}.n_normal", f"must be positive, got {self.n_normal}")
        require(self.n_other > 0, f"{name}.n_other", f"must be positive, got {self.n_other}")
