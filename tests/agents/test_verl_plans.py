"""The verl trainers' plan ledger (`trace_agents.verl.plans`): each submitted batch keeps its own
budget until each of its prompts was trained or evicted, whatever order verl settles them in."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz import examples
from trace_agents.verl.plans import ContinuationPools, PlanLedger
from trace_allocation import Budget
from trace_allocation.budget import BudgetExceeded


@st.composite
def histories(draw):
    """Plans of random sizes (some prompts given no rollout), then every planned prompt settled
    once, trained or evicted, in a random order interleaved with charges to its plan."""
    plans = draw(st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=5), min_size=1, max_size=5))
    events = []
    for p, counts in enumerate(plans):
        for i, c in enumerate(counts):
            if c:
                events += [("charge", f"p{p}u{i}", draw(st.booleans())) for _ in range(draw(st.integers(0, 4)))]
                events.append(("settle", f"p{p}u{i}", draw(st.booleans())))
    shuffled = draw(st.permutations(events))
    # a prompt's charges come before it settles (verl charges a group when it hands it over)
    return plans, sorted(shuffled, key=lambda e: e[0] == "settle"), draw(st.floats(1, 8))


@examples(60)
@given(histories())
def test_every_plan_closes_once_with_what_its_own_prompts_spent(history):
    plans, events, total = history
    ledger = PlanLedger()
    opened = [ledger.open([f"p{p}u{i}" for i in range(len(c))], Budget(total), step=p, counts=c)
              for p, c in enumerate(plans)]
    expected = {plan.id: 0.0 for plan in opened}
    for kind, uid, flag in events:
        if kind == "charge":
            budget = ledger.budget_of(uid)
            try:
                (budget.charge_continuation if flag else budget.charge_root)()
                expected[int(uid[1:].split("u")[0])] += 0.5 if flag else 1.0
            except BudgetExceeded:
                pass
            assert budget.spent <= budget.total
        else:
            ledger.settle([uid], trained=flag, step=9)
    closed = ledger.drain()
    assert sorted(closed.ids) == list(range(len(plans))) and not ledger.plans and not ledger.plan_of
    assert closed.spent == pytest.approx(sum(expected.values()))
    assert closed.trained + closed.evicted == sum(c > 0 for counts in plans for c in counts)
    assert ledger.drain().ids == []


def test_a_resumed_ledger_charges_the_same_plans():
    ledger = PlanLedger()
    ledger.open(["a", "b"], Budget(4), step=1, counts=[2, 0])
    ledger.open(["c"], Budget(2), step=2, counts=[1])
    ledger.budget_of("a").charge_root()
    resumed = PlanLedger()
    resumed.load_state_dict(ledger.state_dict())
    assert resumed.budget_of("a").spent == 1 and resumed.budget_of("c").total == 2
    assert ledger.drain().ids == [] and resumed.next_id == 2
    resumed.settle(["a"], trained=True, step=3)
    assert resumed.drain().ids == [0]
    with pytest.raises(KeyError):
        resumed.budget_of("b")  # given no rollout: settled when planned


def test_a_prompt_is_planned_once_and_a_corrupt_state_is_refused():
    ledger = PlanLedger()
    ledger.open(["a"], Budget(2), step=0, counts=[1])
    with pytest.raises(ValueError, match="twice"):
        ledger.open(["a"], Budget(2), step=0, counts=[1])
    state = ledger.state_dict()
    state["plans"][0]["budget"]["spent"] = 99.0
    with pytest.raises(ValueError):
        PlanLedger().load_state_dict(state)


def test_a_plans_pool_never_feeds_another_plan():
    pools = ContinuationPools()
    pools.give(0, 3)
    assert pools.take(1, 5) == 0 and pools.take(0, 2) == 2
    assert pools.close([0, 1]) == 1 and pools.pools == {}
