"""The concept being erased and the prompt templates built from it."""

from __future__ import annotations

from dataclasses import dataclass

from dm2.config import require


@dataclass
class ConceptParams:
    name: str
    template: str = "a {concept} photo"  # paper: "a * photo"

    def validate(self, key: str) -> None:
        require(bool(self.name.strip()), f"{key}.name", "the concept to erase must be named")
        require("{concept}" in self.template, f"{key}.template", f"must contain '{{concept}}', got {self.template!r}")

    @property
    def prompt(self) -> str:
        return self.template.format(concept=self.name)
