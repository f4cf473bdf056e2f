"""Sampling-cost accounting shared by every allocator, so comparisons are at equal cost.

Two conventions (TRACE_METHOD.md, "Budget accounting"):
* unit="trajectory": a root rollout costs 1 and a continuation `continuation_cost` (default 1/2,
  since it starts mid-trajectory on average);
* unit="turns" or "tokens": every rollout costs exactly what it generated.
Planning needs a price before generation, so `root_price`/`continuation_price` are the fixed
prices, or in the exact units the running mean of what was charged (seeded by `estimates`).
`prices` (an `ExpectedCost`, or any callable) prices each prompt's bare rollout at its own expected
length in the exact units, so Stage 1 plans per prompt; a continuation is planned at
`continuation_cost` times its prompt's price (it starts, on average, mid-trajectory).
A charge that would exceed the total is refused, so a budget can never be overspent.
Whatever the unit, `usage` adds up every charged rollout in all three units (trajectory-equivalents,
turns, tokens), so every comparison can report both conventions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

import numpy as np

Unit = Literal["trajectory", "turns", "tokens"]


class Multiplied(Protocol):
    """What a budget reads of an allocator (``trace_allocation.allocators.Allocator`` is one):
    the budget sits below the allocators that plan against it and never imports them."""

    budget_multiple: float


class BudgetExceeded(RuntimeError):
    """Raised instead of charging past the total."""


class Budget:
    def __init__(
        self,
        total: float,
        *,
        continuation_cost: float = 0.5,
        unit: Unit = "trajectory",
        estimates: tuple[float, float] | None = None,
        prices: Callable[[Sequence[str]], np.ndarray] | None = None,
    ) -> None:
        if total < 0:
            raise ValueError(f"total must be >= 0, got {total}")
        if unit not in ("trajectory", "turns", "tokens"):
            raise ValueError(f"unknown unit {unit!r}")
        if unit != "trajectory" and estimates is None:
            raise ValueError("exact units need estimates=(root, continuation) for planning")
        self.total = float(total)
        self.unit: Unit = unit
        self.continuation_cost = float(continuation_cost)
        self.spent = 0.0
        self.roots = 0
        self.continuations = 0
        self._estimates = estimates or (1.0, self.continuation_cost)
        self._charged = {"root": [0.0, 0], "continuation": [0.0, 0]}
        self.prices = prices
        self.usage = {"trajectory": 0.0, "turns": 0.0, "tokens": 0.0}
        """Everything charged so far in every unit (turns/tokens only where they were given)."""

    @classmethod
    def for_allocator(cls, allocator: Multiplied, total: float, **options: Any) -> Budget:
        """The step budget of ``allocator``: the common ``total`` times its budget multiple
        (only DAPO over-samples), so every driver sizes a step the same way."""
        return cls(total * allocator.budget_multiple, **options)

    @property
    def remaining(self) -> float:
        return self.total - self.spent

    @property
    def root_price(self) -> float:
        return self._price("root", self._estimates[0])

    @property
    def continuation_price(self) -> float:
        return self._price("continuation", self._estimates[1])

    def _price(self, kind: str, estimate: float) -> float:
        amount, n = self._charged[kind]
        return estimate if self.unit == "trajectory" or n == 0 else amount / n

    def cost(self, *, continuation: bool, turns: int | None = None, tokens: int | None = None) -> float:
        """What one rollout costs in this budget's unit (turns/tokens are what it generated)."""
        if self.unit == "trajectory":
            return self.continuation_cost if continuation else 1.0
        amount = turns if self.unit == "turns" else tokens
        if amount is None:
            raise ValueError(f"a budget in {self.unit} needs the generated {self.unit} to charge")
        return float(amount)

    def root_prices(self, texts: Sequence[str]) -> np.ndarray:
        """Expected cost of one bare rollout of each prompt, in this budget's unit."""
        if self.prices is None or self.unit == "trajectory":
            return np.full(len(texts), self.root_price)
        return np.asarray(self.prices(texts), dtype=float)

    def plan_prices(self, texts: Sequence[str], continuations_per_root: float = 0.0) -> np.ndarray:
        """Expected cost of one root rollout of each prompt with its planned continuations."""
        prices = self.root_prices(texts)
        if self.prices is None or self.unit == "trajectory":
            return prices + continuations_per_root * self.continuation_price
        return prices * (1.0 + continuations_per_root * self.continuation_cost)

    def can_afford(self, cost: float) -> bool:
        return self.spent + cost <= self.total + 1e-9

    def roots_affordable(self, continuations_per_root: float = 0.0) -> int:
        """Root rollouts the remaining budget pays for, with their planned continuations."""
        per_root = self.root_price + continuations_per_root * self.continuation_price
        return max(0, math.floor(self.remaining / per_root + 1e-9))

    def continuations_affordable(self, *, reserved: float = 0.0) -> int:
        """Continuations the budget pays for at the planning price, ``reserved`` set aside (the
        price of roots planned but not yet charged)."""
        return max(0, math.floor((self.remaining - reserved) / self.continuation_price + 1e-9))

    def affordable_groups(self, extra: np.ndarray) -> np.ndarray:
        """Whole groups of root rollouts (``extra[i]`` for prompt i), in order, while the budget
        pays for them (refills)."""
        left = self.roots_affordable()
        kept = np.zeros_like(extra)
        for i in np.flatnonzero(extra):
            if extra[i] <= left:
                kept[i], left = extra[i], left - extra[i]
        return kept

    def charge_root(self, *, turns: int | None = None, tokens: int | None = None) -> float:
        cost = self.cost(continuation=False, turns=turns, tokens=tokens)
        return self._charge("root", cost, 1.0, turns, tokens)

    def charge_continuation(self, *, turns: int | None = None, tokens: int | None = None) -> float:
        cost = self.cost(continuation=True, turns=turns, tokens=tokens)
        return self._charge("continuation", cost, self.continuation_cost, turns, tokens)

    def _charge(self, kind: str, cost: float, trajectory: float, turns: int | None, tokens: int | None) -> float:
        if not self.can_afford(cost):
            raise BudgetExceeded(f"{kind} costing {cost:g} exceeds the remaining {self.remaining:g}")
        self.usage["trajectory"] += trajectory
        self.usage["turns"] += turns or 0
        self.usage["tokens"] += tokens or 0
        self.spent += cost
        self._charged[kind][0] += cost
        self._charged[kind][1] += 1
        if kind == "root":
            self.roots += 1
        else:
            self.continuations += 1
        return cost

    def state_dict(self) -> dict[str, Any]:
        """What was charged, for a checkpoint (a `prices` callable is not state: pass it again)."""
        return {"total": self.total, "unit": self.unit, "continuation_cost": self.continuation_cost,
                "estimates": list(self._estimates), "spent": self.spent, "roots": self.roots,
                "continuations": self.continuations, "charged": {k: list(v) for k, v in self._charged.items()},
                "usage": dict(self.usage)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], **options: Any) -> Budget:
        budget = cls(float(state["total"]), unit=state["unit"], continuation_cost=float(state["continuation_cost"]),
                     estimates=tuple(map(float, state["estimates"])), **options)
        budget.spent, budget.roots = float(state["spent"]), int(state["roots"])
        budget.continuations = int(state["continuations"])
        budget._charged = {k: [float(v[0]), int(v[1])] for k, v in state["charged"].items()}
        if set(budget._charged) != {"root", "continuation"} or budget.spent > budget.total + 1e-9:
            raise ValueError(f"not a budget's state: {state!r}")
        budget.usage = {k: float(state["usage"][k]) for k in ("trajectory", "turns", "tokens")}
        return budget

    def __repr__(self) -> str:
        return (
            f"Budget(total={self.total:g}, spent={self.spent:g}, unit={self.unit!r}, "
            f"roots={self.roots}, continuations={self.continuations})"
        )


class ExpectedCost:
    """Each prompt's expected bare-rollout cost in an exact unit, from what the run has charged:
    a prompt's own running mean once it has been rolled out, the mean over all prompts before
    (or `initial` before anything ran). Pass it as `Budget(prices=...)`."""

    def __init__(self, initial: float) -> None:
        self.initial = float(initial)
        self._per_prompt: dict[str, list[float]] = {}
        self._total = [0.0, 0]

    def observe(self, prompt: str, cost: float) -> None:
        entry = self._per_prompt.setdefault(prompt, [0.0, 0])
        entry[0] += cost
        entry[1] += 1
        self._total[0] += cost
        self._total[1] += 1

    def __call__(self, prompts: Sequence[str]) -> np.ndarray:
        default = self._total[0] / self._total[1] if self._total[1] else self.initial
        out = np.empty(len(prompts))
        for i, p in enumerate(prompts):
            amount, n = self._per_prompt.get(p, (0.0, 0))
            out[i] = amount / n if n else default
        return out
