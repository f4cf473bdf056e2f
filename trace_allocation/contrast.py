"""The one effective-ratio function: how much learning signal a step's rollout trees carry.

Every driver (simulator, training sampler, verl glue) and every table or plot reports these same
figures for every method, so no method is measured on a definition of its own:

* ``mixed_trees``: prompts whose tree has a success and a failure leaf (realized mixed trees). The
  fairest headline, since methods open different numbers of prompts.
* ``ratio`` = mixed trees / prompts opened (the paper's effective ratio). A prompt counts as
  opened when it got at least one rollout; DAPO's dropped groups count too, since it paid for them.
* ``informative_share``: share of trajectories (rewarded leaves, roots and continuations alike)
  whose reward differs from their prompt's mean, i.e. with a non-zero group-relative advantage.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from trace_allocation.tree import RolloutTree


@dataclass(frozen=True)
class Contrast:
    mixed_trees: int
    prompts_opened: int
    trajectories: int
    informative_trajectories: int

    @property
    def ratio(self) -> float:
        return self.mixed_trees / self.prompts_opened if self.prompts_opened else 0.0

    @property
    def informative_share(self) -> float:
        return self.informative_trajectories / self.trajectories if self.trajectories else 0.0

    def as_dict(self) -> dict[str, float]:
        """The figures every report leads with, under the keys every report uses."""
        return {"mixed_trees": self.mixed_trees, "effective_ratio": self.ratio,
                "informative_share": self.informative_share, "prompts_opened": self.prompts_opened,
                "trajectories": self.trajectories}


def contrast(trees: Iterable[RolloutTree]) -> Contrast:
    """Count the step's figures over every tree that got at least one rewarded rollout."""
    mixed = opened = trajectories = informative = 0
    for tree in trees:
        rewards = tree.rewards()
        if not rewards:
            continue
        opened += 1
        mean = sum(rewards) / len(rewards)
        trajectories += len(rewards)
        informative += sum(abs(r - mean) > 1e-12 for r in rewards)
        mixed += max(rewards) > min(rewards)
    return Contrast(mixed, opened, trajectories, informative)

