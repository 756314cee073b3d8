"""The erasure methods' params: DM2's (`pool`, `erase`, `mine`, `verify`, `circumvent`) and
the baselines' (`baselines`), and the names of every method (`method`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from dm2.core.config import Section, require, template_fields

OPTIMIZERS = ("sgd", "adam")
REPLAYS = ("loop", "epoch")
MINE_INITS = ("anchor", "concept")
LORA_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")  # of every attention module, self and cross
LORA_VARIANTS = ("x", "u")  # x: cross-attention projections (ESD-x); u: the rest (ESD-u)
MODES = ("concat", "additive")
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
