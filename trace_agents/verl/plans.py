"""Each submitted batch of prompts is a *plan* with its own `Budget`, so a rollout is charged to
the plan that decided it, whichever training step samples it.

verl's asynchronous trainers submit prompts ahead (warm-up batches), refill evicted groups, and
train whichever groups finished first: a prompt planned while step k ran may be trained in step
k+2, or evicted as stale and never trained. A budget on the trainer's step would charge it to
the wrong step. The ledger keys budgets by plan id instead; the plan id travels with each prompt
row (`PLAN_KEY`, persisted by TransferQueue with the row, so a re-issued prompt keeps it), and
each plan's Stage 2 pool is a `ContinuationPools` entry under the same id (checkpointed with the
open plans). A plan closes once each of its prompts was trained or evicted; the synchronous
trainer is the case of one plan per step, closed by the step that opened it.

No verl import: `trace_agents.verl.trainer` wires this into verl, the tests drive it directly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from trace_allocation import Budget

PLAN_KEY = "__trace_plan__"
"""Per-row batch column: the id of the plan that counted the prompt's rollouts."""


@dataclass
class Plan:
    id: int
    step: int
    """The training step during which it was submitted (verl's ``global_steps``)."""
    budget: Budget
    open: set[str]
    """Prompt uids neither trained nor evicted yet."""
    prompts: int
    trained: int = 0
    evicted: int = 0


@dataclass
class Closed:
    """What the plans that closed since the last `PlanLedger.drain` spent, for the step's metrics."""

    ids: list[int] = field(default_factory=list)
    total: float = 0.0
    spent: float = 0.0
    roots: int = 0
    continuations: int = 0
    trained: int = 0
    evicted: int = 0
    staleness: list[int] = field(default_factory=list)
    """Per closed plan: training steps between its submission and its close."""

    def add(self, plan: Plan, step: int) -> None:
        self.ids.append(plan.id)
        self.total += plan.budget.total
        self.spent += plan.budget.spent
        self.roots += plan.budget.roots
        self.continuations += plan.budget.continuations
        self.trained += plan.trained
        self.evicted += plan.evicted
        self.staleness.append(step - plan.step)


class PlanLedger:
    """The open plans and their budgets (see the module docstring)."""

    def __init__(self) -> None:
        self.plans: dict[int, Plan] = {}
        self.plan_of: dict[str, int] = {}
        self.next_id = 0
        self.closed = Closed()

    def open(self, uids: Iterable[str], budget: Budget, *, step: int, counts: Iterable[int]) -> Plan:
        """A plan for these prompts; a prompt Stage 1 gave no rollout is settled at once (it has
        nothing to train, and verl never hands the trainer a group without trajectories)."""
        uids, counts = list(uids), list(counts)
        if len(uids) != len(counts):
            raise ValueError(f"{len(uids)} uids but {len(counts)} counts")
        if len(set(uids)) != len(uids) or any(u in self.plan_of for u in uids):
            raise ValueError("a prompt uid is planned twice")
        plan = Plan(self.next_id, step, budget, {u for u, c in zip(uids, counts) if c > 0}, len(uids))
        self.next_id += 1
        self.plans[plan.id] = plan
        for u in plan.open:
            self.plan_of[u] = plan.id
        if not plan.open:
            self._close(plan, step)
        return plan

    def budget_of(self, uid: str) -> Budget:
        """The budget a rollout of this prompt is charged to."""
        plan_id = self.plan_of.get(uid)
        if plan_id is None:
            raise KeyError(f"prompt {uid} belongs to no open plan")
        return self.plans[plan_id].budget

    def settle(self, uids: Iterable[str], *, trained: bool, step: int) -> None:
        """These prompts were trained (or evicted): a plan whose prompts all settled closes.
        A uid of no open plan (a prompt Stage 1 dropped, settled when planned) is ignored."""
        for uid in uids:
            plan_id = self.plan_of.pop(uid, None)
            if plan_id is None:
                continue
            plan = self.plans[plan_id]
            plan.open.discard(uid)
            if trained:
                plan.trained += 1
            else:
                plan.evicted += 1
            if not plan.open:
                self._close(plan, step)

    def _close(self, plan: Plan, step: int) -> None:
        del self.plans[plan.id]
        self.closed.add(plan, step)

    def drain(self) -> Closed:
        """The plans closed since the last call (the step's metrics), and start counting afresh."""
        closed, self.closed = self.closed, Closed()
        return closed

    def state_dict(self) -> dict[str, Any]:
        return {"next_id": self.next_id,
                "plans": [{"id": p.id, "step": p.step, "prompts": p.prompts, "trained": p.trained,
                           "evicted": p.evicted, "open": sorted(p.open), "budget": p.budget.state_dict()}
                          for p in self.plans.values()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plans.clear()
        self.plan_of.clear()
        self.closed = Closed()
        self.next_id = int(state["next_id"])
        for p in state["plans"]:
            plan = Plan(int(p["id"]), int(p["step"]), Budget.from_state_dict(p["budget"]), set(map(str, p["open"])),
                        int(p["prompts"]), int(p["trained"]), int(p["evicted"]))
            if plan.id >= self.next_id or not plan.open:
                raise ValueError(f"plan {plan.id} is not an open plan of this ledger")
            self.plans[plan.id] = plan
            for u in plan.open:
                if u in self.plan_of:
                    raise ValueError(f"prompt {u} is in two plans")
                self.plan_of[u] = plan.id


class ContinuationPools:
    """One Stage 2 pool per open plan: a prompt's unused Stage 2 share goes to the later prompts
    of its own plan, never to another plan's budget.

    Each prompt's net contribution (what it gave less what it took) is kept, so that a prompt
    run again (verl re-issues the in-flight prompts of a resumed run) first withdraws what its
    earlier attempt gave and returns what it took (`begin`), and so that the pools of the open
    plans are checkpointed with them (`state_dict`). A withdrawal may leave a pool in debt
    (a later prompt drew the share): it pays nothing out until prompts give it back."""

    def __init__(self) -> None:
        self.nets: dict[int, dict[str, float]] = {}

    def left(self, plan: int) -> float:
        """What ``plan``'s pool holds: its prompts' net contributions (below zero: in debt)."""
        return math.fsum(self.nets.get(plan, {}).values())

    def begin(self, plan: int, uid: str) -> None:
        """Prompt ``uid`` of ``plan`` (re)starts: its earlier attempt's contribution is withdrawn."""
        self.nets.get(plan, {}).pop(uid, None)

    def give(self, plan: int, uid: str, amount: float) -> None:
        self._add(plan, uid, max(0.0, float(amount)))

    def take(self, plan: int, uid: str, most: float) -> float:
        got = min(max(0.0, float(most)), max(0.0, self.left(plan)))
        self._add(plan, uid, -got)
        return got

    def _add(self, plan: int, uid: str, amount: float) -> None:
        nets = self.nets.setdefault(plan, {})
        nets[uid] = nets.get(uid, 0.0) + amount

    def close(self, plans: Iterable[int]) -> float:
        """Forget closed plans; returns what their pools left unspent."""
        unspent = 0.0
        for p in plans:
            unspent += max(0.0, self.left(p))
            self.nets.pop(p, None)
        return unspent

    def state_dict(self) -> dict[str, Any]:
        return {"plans": [{"id": p, "nets": dict(nets)} for p, nets in self.nets.items()]}

    def load_state_dict(self, state: dict[str, Any], open_plans: Iterable[int]) -> None:
        """Restore the pools of ``open_plans`` (the ledger's, loaded from the same checkpoint);
        a pool of any other plan, or a contribution that is not a finite number, is refused."""
        known = set(open_plans)
        nets: dict[int, dict[str, float]] = {}
        for entry in state["plans"]:
            plan = int(entry["id"])
            if plan not in known or plan in nets:
                raise ValueError(f"a Stage 2 pool of plan {plan}, which is not an open plan of the ledger")
            nets[plan] = {str(u): float(v) for u, v in dict(entry["nets"]).items()}
            if not all(math.isfinite(v) for v in nets[plan].values()):
                raise ValueError(f"plan {plan}'s Stage 2 pool holds a contribution that is not finite")
        self.nets = nets


__all__ = ["PLAN_KEY", "Closed", "ContinuationPools", "Plan", "PlanLedger"]
