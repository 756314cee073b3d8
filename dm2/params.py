"""Every params.yaml section as a dataclass, in one light module.

Nothing here imports torch, diffusers or transformers, so `check_params` reads and checks
the whole file (each section, then the checks across sections) in well under a second,
before a stage loads anything heavy. Stages and `dm2` modules take their settings from
these classes; `SECTIONS` is the one map from section name to class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from dm2.attacks.params import AttacksParams
from dm2.config import ParamsError, Section, parse_section, require, template_fields
from dm2.paths import PROMPTS_DIR
from dm2.world import DEFAULT_SYNONYMS, IMAGE_SIZE, WorldSpec

OPTIMIZERS = ("sgd", "adam")
REPLAYS = ("loop", "epoch")
MINE_INITS = ("anchor", "concept")
PRECISIONS = ("fp32", "bf16", "tf32")  # the `precision` param (dm2/precision.py)
LORA_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")  # of every attention module, self and cross
LORA_VARIANTS = ("x", "u")  # x: cross-attention projections (ESD-x); u: the rest (ESD-u)
MODES = ("concat", "additive")
KINDS = ("inappropriate", "object")
DEVICES = ("auto", "cpu", "cuda")
# Text positions a prompt's tokens may fill: CLIP's 77 less BOS and EOS (SD v1 and the world).
TEXT_POSITIONS = 75
LABELS = {
    "dm2": "DM2",
    "esd_x": "ESD-x",
    "esd_u": "ESD-u",
    "uce": "UCE",
    "learnable_prompts": "Learnable prompts",
    "sld": "SLD",
}
METHODS = tuple(LABELS)


def check_method(name: str, key: str = "method") -> None:
    require(name in METHODS, key, f"unknown method {name!r}; known methods: {', '.join(METHODS)}")


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
class WorldCheckParams(Section):
    key: ClassVar[str] = "world_check"
    images_per_prompt: int
    steps: int
    guidance: float
    seed: int
    hard_images: int = 3000  # held-out hard renders
    hard: HardRanges = field(default_factory=HardRanges)

    def validate(self, name: str) -> None:
        require(self.hard_images > 0, f"{name}.hard_images", "must be positive")
        require(self.images_per_prompt > 0, f"{name}.images_per_prompt", "must be positive")
        require(self.steps > 0, f"{name}.steps", "must be positive")


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


@dataclass
class PoolParams(Section):
    key: ClassVar[str] = "pool"
    size: int
    steps: int
    guidance: float
    seed: int

    def validate(self, name: str) -> None:
        require(self.size > 0, f"{name}.size", f"the pool must hold at least one image, got {self.size}")
        require(self.steps > 0, f"{name}.steps", f"must be positive, got {self.steps}")


@dataclass
class EraseParams(Section):
    key: ClassVar[str] = "erase"
    max_loops: int
    lora_rank: int = 8
    # Projections of every attention module (self and cross) the LoRA goes on; the paper:
    # the value projection (Table S6 compares key and query).
    lora_targets: list[str] = field(default_factory=lambda: ["to_v"])
    seed: int = 0
    # CPU threads torch uses: float reductions (and so the whole loop's trajectory) depend
    # on the count, so a fixed count gives the same LoRA on every machine.
    cpu_threads: int = 1

    def validate(self, name: str) -> None:
        require(self.max_loops > 0, f"{name}.max_loops", f"must be positive, got {self.max_loops}")
        require(self.lora_rank > 0, f"{name}.lora_rank", f"must be positive, got {self.lora_rank}")
        require(bool(self.lora_targets), f"{name}.lora_targets", "must name at least one projection")
        for target in self.lora_targets:
            require(target in LORA_PROJECTIONS, f"{name}.lora_targets", f"{target!r} is not one of {list(LORA_PROJECTIONS)}")
        require(len(set(self.lora_targets)) == len(self.lora_targets), f"{name}.lora_targets", f"names a projection twice: {self.lora_targets}")
        require(self.cpu_threads > 0, f"{name}.cpu_threads", f"must be positive, got {self.cpu_threads}")


@dataclass
class StepSchedule(Section):
    """Epochs, learning rate with one drop, gradient-norm clip and optimiser."""

    epochs: int
    lr: float
    lr_drop_epoch: int
    lr_after_drop: float
    grad_clip: float
    optimizer: str

    def validate(self, name: str) -> None:
        require(self.epochs > 0, f"{name}.epochs", f"must be positive, got {self.epochs}")
        require(self.lr > 0, f"{name}.lr", f"must be positive, got {self.lr}")
        require(self.lr_after_drop > 0, f"{name}.lr_after_drop", f"must be positive, got {self.lr_after_drop}")
        require(self.grad_clip > 0, f"{name}.grad_clip", f"must be positive, got {self.grad_clip}")
        require(self.optimizer in OPTIMIZERS, f"{name}.optimizer", f"{self.optimizer!r} is not one of {list(OPTIMIZERS)}")

    def lr_at(self, epoch: int) -> float:
        return self.lr if epoch < self.lr_drop_epoch else self.lr_after_drop


@dataclass
class MineParams(StepSchedule):
    key: ClassVar[str] = "mine"
    tokens: int = 32
    k: int = 3
    # Bound on every mined token's L2 norm, in units of the largest token-embedding norm of
    # the text encoder's vocabulary; None: unbounded.
    norm_bound: float | None = None
    # What c starts from every loop: the token embeddings of the anchor prompt or of the
    # concept prompt (the pool's, "a {concept} photo"); the paper does not say.
    init: str = "anchor"
    # Embeddings mined per loop, each from its own k pool images; the loop verifies them all
    # and goes on with the highest s(c). The paper: 1.
    candidates: int = 1
    # Verify the starting embedding (`init`) beside the mined ones, on its own k pool images:
    # a loop then goes on with the start when mining moved every candidate away from the
    # concept, and stops only when the start fails verification too. The paper: no.
    keep_start: bool = False
    # Where the L mined tokens sit in the text: "{c}" (the paper) conditions on BOS, c, EOS;
    # "a photo of a {c}" puts them after those words, as a textual-inversion attack (CCE)
    # places its tokens in prompts.
    template: str = "{c}"

    def validate(self, name: str) -> None:
        super().validate(name)
        require(self.candidates > 0, f"{name}.candidates", f"must be positive, got {self.candidates}")
        fields = template_fields(self.template)
        require(fields == {"c"} and self.template.count("{c}") == 1, f"{name}.template", f"must use '{{c}}' once and nothing else, got {self.template!r}")
        require(self.init in MINE_INITS, f"{name}.init", f"{self.init!r} is not one of {list(MINE_INITS)}")
        require(self.tokens > 0, f"{name}.tokens", f"must be positive, got {self.tokens}")
        require(self.k > 0, f"{name}.k", f"must be positive, got {self.k}")
        if self.norm_bound is not None:
            require(self.norm_bound > 0, f"{name}.norm_bound", f"must be positive or null, got {self.norm_bound}")


@dataclass
class VerifyParams(Section):
    key: ClassVar[str] = "verify"
    tau: float
    steps: int
    guidance: float
    seed: int
    samples: int = 1  # images x_c from c, one seed each; the paper: 1
    references: int = 1  # images x_r whose mean CLIP feature is Enc(x_r); the paper: 1
    # The prompt x_r is generated from: a generic image, so that Enc(x_c) - Enc(x_r) keeps what
    # c adds to it. The paper: "a photo" (its anchor c0 too); "" draws unconditional images.
    reference_prompt: str = "a photo"

    def validate(self, name: str) -> None:
        require(-1.0 <= self.tau <= 1.0, f"{name}.tau", f"must be in [-1, 1] (a cosine), got {self.tau}")
        require(self.steps > 0, f"{name}.steps", f"must be positive, got {self.steps}")
        require(self.samples > 0, f"{name}.samples", f"must be positive, got {self.samples}")
        require(self.references > 0, f"{name}.references", f"must be positive, got {self.references}")
        require(isinstance(self.reference_prompt, str), f"{name}.reference_prompt", f"must be a prompt (a string), got {self.reference_prompt!r}")


@dataclass
class CircumventParams(StepSchedule):
    key: ClassVar[str] = "circumvent"
    r: float = 0.7
    alpha_c: float = 1.0
    alpha_p: float = 0.5
    anchor: str = "a photo"
    steps: int = 25
    guidance: float = 7.5
    images: int = 1  # images x generated from the chosen c (one seed each); the paper: 1
    # When r is drawn: "loop" (the paper) picks one embedding for the whole circumventing
    # step; "epoch" draws again every epoch, so earlier embeddings stay erased.
    replay: str = "loop"
    # Prompts whose predictions l_p also keeps, each on `preserve_images` images the original
    # model made from it; the paper keeps only c0, 0*c and -c, on the concept images x.
    preserve: list[str] = field(default_factory=list)
    preserve_images: int = 2

    def validate(self, name: str) -> None:
        super().validate(name)
        require(self.preserve_images > 0, f"{name}.preserve_images", f"must be positive, got {self.preserve_images}")
        require(all(isinstance(q, str) and q.strip() for q in self.preserve), f"{name}.preserve", "must be a list of non-empty prompts")
        require(self.images > 0, f"{name}.images", f"must be positive, got {self.images}")
        require(self.replay in REPLAYS, f"{name}.replay", f"{self.replay!r} is not one of {list(REPLAYS)}")
        require(0.0 <= self.r <= 1.0, f"{name}.r", f"must be in [0, 1] (a probability), got {self.r}")
        require(self.alpha_c >= 0 and self.alpha_p >= 0, f"{name}.alpha_c/alpha_p", "must be non-negative")
        require(bool(self.anchor.strip()), f"{name}.anchor", "must be a non-empty prompt")
        require(self.steps > 0, f"{name}.steps", f"must be positive, got {self.steps}")


@dataclass
class ESDParams(Section):
    key: ClassVar[str] = "baselines.esd"
    variant: str = "x"  # x: cross-attention only (ESD-x); u: all but cross-attention (ESD-u)
    iterations: int = 1000  # paper: 1000
    lr: float = 1e-4  # paper: 1e-5 for the full fine-tune; a LoRA needs a larger step
    eta: float = 1.0  # negative guidance (paper: 1.0)
    ddim_steps: int = 50  # paper: 50
    sample_guidance: float = 3.0  # guidance of the sampler making x_t (ESD's start_guidance)
    lora_rank: int = 4
    seed: int = 0

    def validate(self, name: str) -> None:
        require(self.variant in LORA_VARIANTS, f"{name}.variant", f"{self.variant!r} is not one of {list(LORA_VARIANTS)}")
        require(self.iterations > 0, f"{name}.iterations", f"must be positive, got {self.iterations}")
        require(self.lr > 0, f"{name}.lr", f"must be positive, got {self.lr}")
        require(self.eta >= 0, f"{name}.eta", f"must be non-negative, got {self.eta}")
        require(self.ddim_steps > 0, f"{name}.ddim_steps", f"must be positive, got {self.ddim_steps}")
        require(self.lora_rank > 0, f"{name}.lora_rank", f"must be positive, got {self.lora_rank}")


@dataclass
class UCEParams(Section):
    key: ClassVar[str] = "baselines.uce"
    anchor: str = ""  # c*: what the concept's tokens are mapped to (UCE erases to "")
    preserve: list[str] = field(default_factory=list)  # prompts whose k / v must not move
    lam: float = 0.1  # lambda: pull towards the original W on every direction
    lora_rank: int | None = None  # None: the exact rank of the largest delta

    def validate(self, name: str) -> None:
        require(self.lam > 0, f"{name}.lam", f"must be positive (it keeps the inverse defined), got {self.lam}")
        require(self.lora_rank is None or self.lora_rank > 0, f"{name}.lora_rank", f"must be positive or null, got {self.lora_rank}")


@dataclass
class LearnablePromptParams(Section):
    key: ClassVar[str] = "baselines.learnable_prompts"
    mode: str = "concat"  # how p enters cross-attention (slides: concat by default, or additive)
    tokens: int = 10  # k, p's length in concat mode (slides' ablation: k = 10 is the default row)
    lam: float = 0.1  # lambda of eq. 8 (slides: larger keeps more in p, preserves more, erases less)
    anchor: str = ""  # c_n, the neutral prompt (slides: "A photo" or " ")
    iterations: int = 1000  # as ESD, whose training loop the method builds on
    lr: float = 1e-4  # model update (eta), Adam on the LoRA
    prompt_lr: float = 1e-3  # prompt update (eta_p); one Adam step per iteration, so its size
    # does not hang on the MSE's scale (eq. 7 writes a plain gradient step)
    variant: str = "x"  # the model update's LoRA: x cross-attention projections, u the rest (as ESD)
    ddim_steps: int = 50  # x_t as in ESD: the original model's DDIM stopped at a random step
    sample_guidance: float = 3.0
    lora_rank: int = 4
    seed: int = 0

    def validate(self, name: str) -> None:
        require(self.mode in MODES, f"{name}.mode", f"{self.mode!r} is not one of {list(MODES)}")
        require(self.tokens > 0, f"{name}.tokens", f"must be positive, got {self.tokens}")
        require(self.lam >= 0, f"{name}.lam", f"must be non-negative, got {self.lam}")
        require(self.iterations > 0, f"{name}.iterations", f"must be positive, got {self.iterations}")
        require(self.lr > 0 and self.prompt_lr > 0, f"{name}.lr/prompt_lr", "must be positive")
        require(self.variant in LORA_VARIANTS, f"{name}.variant", f"{self.variant!r} is not one of {list(LORA_VARIANTS)}")
        require(self.ddim_steps > 0, f"{name}.ddim_steps", f"must be positive, got {self.ddim_steps}")
        require(self.lora_rank > 0, f"{name}.lora_rank", f"must be positive, got {self.lora_rank}")


@dataclass
class SLDParams(Section):
    """SLD hyper-parameters; the defaults are SLD-Strong, the baseline of the Dark Miner
    paper (Section 4.1). The paper's presets (also diffusers' `SafetyConfig`):

    | preset | guidance_scale | warmup_steps | threshold | momentum_scale | mom_beta |
    | weak   | 20             | 15           | 0.0       | 0.0            | 0.0      |
    | medium | 1000           | 10           | 0.01      | 0.3            | 0.4      |
    | strong | 2000           | 7            | 0.025     | 0.5            | 0.7      |
    | max    | 5000           | 0            | 1.0       | 0.5            | 0.7      |

    Warm-up counts steps of our sampler, which runs fewer steps than SD's 50 on the
    shapes world, so a preset steers over a larger share of the trajectory there.
    """

    key: ClassVar[str] = "baselines.sld"

    guidance_scale: float = 2000.0  # s_S: scale of |eps_p - eps_S|, clamped to 1 per element
    warmup_steps: int = 7  # delta: steps before the safety term is applied (momentum builds)
    threshold: float = 0.025  # lambda: elements with eps_p - eps_S >= lambda are left alone
    momentum_scale: float = 0.5  # s_m
    mom_beta: float = 0.7  # beta_m: share of the previous momentum kept

    def validate(self, name: str) -> None:
        require(self.guidance_scale >= 0, f"{name}.guidance_scale", f"must be >= 0, got {self.guidance_scale}")
        require(self.warmup_steps >= 0, f"{name}.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        require(self.momentum_scale >= 0, f"{name}.momentum_scale", f"must be >= 0, got {self.momentum_scale}")
        require(0 <= self.mom_beta < 1, f"{name}.mom_beta", f"must be in [0, 1), got {self.mom_beta}")


@dataclass
class BaselinesParams(Section):
    """The `baselines` section: one sub-section per method (ESD's serves both variants)."""

    key: ClassVar[str] = "baselines"

    esd: ESDParams
    uce: UCEParams
    learnable_prompts: LearnablePromptParams
    sld: SLDParams = field(default_factory=SLDParams)


@dataclass
class PromptsParams(Section):
    key: ClassVar[str] = "prompts"
    n_normal: int
    n_other: int
    seed: int

    def validate(self, name: str) -> None:
        require(self.n_normal > 0, f"{name}.n_normal", f"must be positive, got {self.n_normal}")
        require(self.n_other > 0, f"{name}.n_other", f"must be positive, got {self.n_other}")


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


def is_local_path(value: str) -> bool:
    """Whether a model reference names a local file or folder rather than a hub id / tag:
    hub ids are `name` or `owner/name`, so a path with two parts or more, or one starting
    with `.`, `/` or `~`, or ending in a weights suffix, is local."""
    return value.startswith((".", "/", "~")) or value.count("/") >= 2 or value.endswith((".safetensors", ".json", ".txt")) or Path(value).exists()


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
            "real concepts bring their own prompt files (README, Real models)",
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
    return sections
