"""The attacks' params: one section per attack and the `attacks` section holding them.

Light on purpose (no torch), like `dm2.params`, which builds params.yaml's `attacks`
section from these classes: the whole file is checked before anything heavy loads.
`ATTACK_PARAMS` is the params side of the attack registry (`dm2.attacks.registry` holds
the code side); adding an attack means a class here, a field of `AttacksParams`, a module
beside this one and an entry in each registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from dm2.core.config import Section, require, require_positive, template_fields

SEARCH_SPACES = ("vocabulary", "prompts")


def check_budgets(budgets: list[int], key: str) -> None:
    """A budget sweep: a non-empty, strictly increasing list of positive step counts."""
    require(bool(budgets), key, "must list at least one budget")
    require(all(b > 0 for b in budgets), key, f"every budget must be positive, got {budgets}")
    require(all(a < b for a, b in zip(budgets, budgets[1:])), key, f"must be strictly increasing, got {budgets}")


@dataclass
class CCEParams(Section):
    key: ClassVar[str] = "attacks.cce"

    images: int  # top-scoring original-model images inverted; paper: 1000
    candidates: int  # normal-prompt images (one per prompt) ranked by the judge to pick them
    budgets: list[int]  # textual inversion steps swept; original TI: 3000-5000 (uncertain for CCE)
    batch_size: int
    lr: float  # original TI: 0.005 (x batch size; uncertain for CCE)
    init_words: list[str]  # one-token words new tokens start from: token j of restart k from word (k + j) mod n
    train_templates: list[str]  # "{token}" marks the new token(s)
    prompt_templates: list[str]  # attack prompts, cycled to n_prompts
    token: str = "<cce>"
    tokens: int = 1  # new tokens learned together (1 to 8): the concept may need more than one

    def validate(self, name: str) -> None:
        require_positive(self, name, "images", "candidates", "batch_size", "lr")
        check_budgets(self.budgets, f"{name}.budgets")
        require(1 <= self.tokens <= 8, f"{name}.tokens", f"must be in [1, 8], got {self.tokens}")
        require(self.candidates >= self.images, f"{name}.candidates", f"must be >= images ({self.images}), got {self.candidates}")
        require(bool(self.init_words) and all(w.strip() for w in self.init_words), f"{name}.init_words", "must list non-empty words")
        for key in ("train_templates", "prompt_templates"):
            templates = getattr(self, key)
            require(bool(templates), f"{name}.{key}", "must not be empty")
            for template in templates:
                fields = template_fields(template)
                require(fields == {"token"}, f"{name}.{key}", f"may use only '{{token}}', and must use it; got fields {sorted(fields)} in {template!r}")


@dataclass
class P4DParams(Section):
    key: ClassVar[str] = "attacks.p4d"

    tokens: int  # learnable tokens: the normal prompt's first `tokens`; paper: P4D-N 16 (uncertain)
    budgets: list[int]  # iterations swept; paper: 3000 (uncertain)
    lr: float  # paper: 0.1, AdamW (uncertain)
    weight_decay: float = 0.1  # paper: 0.1 (uncertain)

    def validate(self, name: str) -> None:
        require_positive(self, name, "tokens", "lr")
        check_budgets(self.budgets, f"{name}.budgets")
        require(self.weight_decay >= 0, f"{name}.weight_decay", f"must be non-negative, got {self.weight_decay}")


@dataclass
class UnlearnDiffParams(Section):
    key: ClassVar[str] = "attacks.unlearndiff"

    prefix_tokens: int  # paper: 5
    budgets: list[int]  # iterations swept; paper: 40
    lr: float  # paper: 0.01, AdamW
    weight_decay: float = 0.1  # paper: 0.1 (uncertain)
    # One word repeated as restart 0's starting prefix; "" = random tokens (original: random,
    # uncertain). Restarts > 0 always start from random tokens.
    prefix_init: str = ""

    def validate(self, name: str) -> None:
        require_positive(self, name, "prefix_tokens", "lr")
        check_budgets(self.budgets, f"{name}.budgets")
        require(self.weight_decay >= 0, f"{name}.weight_decay", f"must be non-negative, got {self.weight_decay}")


@dataclass
class RingABellParams(Section):
    key: ClassVar[str] = "attacks.ring_a_bell"

    tokens: int  # K; paper: 16 for nudity (uncertain)
    eta: float  # concept-vector strength; paper: 3 for nudity (uncertain)
    population: int  # paper: 200 (uncertain)
    budgets: list[int]  # generations swept; paper: 3000 (uncertain)
    mutation_rate: float  # per token; paper: 0.25 (uncertain)
    crossover_rate: float  # paper: 0.5 (uncertain)
    # Words of the concept in the prompts (name and synonyms) and what they are replaced with
    # to form the concept-free pair; empty: taken from the world (`world_words`).
    concept_words: list[str] = field(default_factory=list)
    neutral_words: list[str] = field(default_factory=list)
    elite: int = 1  # best individuals kept as they are: the best fitness never drops
    init_from_prompt: bool = True  # paper: random initial population

    def validate(self, name: str) -> None:
        require_positive(self, name, "tokens", "population", "elite")
        check_budgets(self.budgets, f"{name}.budgets")
        require(self.elite < self.population, f"{name}.elite", f"must be below population ({self.population}), got {self.elite}")
        for key in ("mutation_rate", "crossover_rate"):
            require(0.0 <= getattr(self, key) <= 1.0, f"{name}.{key}", f"must be in [0, 1], got {getattr(self, key)}")
        require(bool(self.concept_words) == bool(self.neutral_words), f"{name}.concept_words/neutral_words", "give both, or neither (world words)")


@dataclass
class AttacksParams(Section):
    key: ClassVar[str] = "attacks"

    n_prompts: int  # normal prompts attacked, from the top of the CSV; paper: 100 (P4D, UnlearnDiff)
    steps: int  # sampler steps for every image here
    guidance: float
    seed: int
    batch_size: int  # prompts optimised together (memory, not results, on a real model)
    # Tokens P4D, UnlearnDiff and Ring-A-Bell may use: "vocabulary" (paper: all of CLIP's) or
    # "prompts": those of every prompt in data/prompts, the only words the world's text
    # encoder learned (the rest of its vocabulary is untrained random embeddings).
    search_space: str
    cce: CCEParams
    p4d: P4DParams
    unlearndiff: UnlearnDiffParams
    ring_a_bell: RingABellParams
    # P4D and UnlearnDiff attack "ideal" prompts: normal prompts whose base image (same
    # starting noise) the judge calls the concept; all attacks then share that prompt set.
    ideal_prompts: bool = True
    restarts: int = 3  # every attack runs this many times from different starts

    def validate(self, name: str) -> None:
        require_positive(self, name, "n_prompts", "steps", "batch_size", "restarts")
        require(self.search_space in SEARCH_SPACES, f"{name}.search_space", f"{self.search_space!r} is not one of {list(SEARCH_SPACES)}")

    def budgets(self, attack: str) -> list[int]:
        return list(getattr(self, attack).budgets)


# Every attack measured, in report order: its params class and the name figures carry.
ATTACK_PARAMS: dict[str, type[Section]] = {
    "cce": CCEParams,
    "p4d": P4DParams,
    "unlearndiff": UnlearnDiffParams,
    "ring_a_bell": RingABellParams,
}
ATTACK_LABELS = {"cce": "CCE", "p4d": "P4D", "unlearndiff": "UnlearnDiff", "ring_a_bell": "Ring-A-Bell"}
ATTACKS = tuple(ATTACK_PARAMS)
