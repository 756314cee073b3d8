"""Every attack by name: the code side of the registry (`dm2.attacks.params.ATTACK_PARAMS`
is the params side, in the same order; a test checks they agree). The sweep runs what
this lists, so adding an attack needs no change to the sweep or the stages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from diffusers import StableDiffusionPipeline

from dm2.attacks import cce, p4d, ring_a_bell, unlearndiff
from dm2.attacks.common import AttackInputs, AttackResult, BudgetJudge
from dm2.attacks.params import AttacksParams


@dataclass(frozen=True)
class Attack:
    # One restart against the model the pipeline is now: a result per budget. An attack that
    # searches per prompt hands each budget's result to the judge as it gets there, and the
    # prompts already attacked leave its search; the sweep judges the results not handed.
    run: Callable[[StableDiffusionPipeline, AttackInputs, AttacksParams, int, BudgetJudge], list[AttackResult]]
    # Whether its prompts stand for the shared normal prompts, so each image starts from
    # that prompt's base noise (CCE's prompts are its own: they start from fresh noise).
    from_normal_prompts: bool


REGISTRY: dict[str, Attack] = {
    "cce": Attack(cce.run, from_normal_prompts=False),
    "p4d": Attack(p4d.run, from_normal_prompts=True),
    "unlearndiff": Attack(unlearndiff.run, from_normal_prompts=True),
    "ring_a_bell": Attack(ring_a_bell.run, from_normal_prompts=True),
}
