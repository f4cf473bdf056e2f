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
            # within `Budget.can_afford`'s 1e-9: a total a float error under 2 still pays 2 roots
            assert budget.spent <= budget.total + 1e-9
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
    pools.give(0, "a", 3)
    assert pools.take(1, "b", 5) == 0 and pools.take(0, "c", 2) == 2
    assert pools.close([0, 1]) == 1 and pools.nets == {} and pools.left(0) == 0


@st.composite
def pool_histories(draw):
    """Prompts of one plan starting (again: a re-issue), giving and taking in a random order,
    with checkpoints (the pools saved and restored) between any two calls."""
    uids = st.sampled_from("abcd")
    step = st.one_of(st.tuples(st.just("begin"), uids, st.just(0)),
                     st.tuples(st.just("give"), uids, st.integers(0, 4)),
                     st.tuples(st.just("take"), uids, st.integers(0, 4)),
                     st.tuples(st.just("checkpoint"), st.just(""), st.just(0)))
    return draw(st.lists(step, max_size=40))


@examples(100)
@given(pool_histories())
def test_a_pool_holds_what_the_current_attempts_gave_less_what_they_took(history):
    """A re-issued prompt's earlier attempt counts for nothing: the pool is always the current
    attempts' gifts less their draws, pays out only from a positive balance, and a checkpoint
    changes nothing."""
    pools = ContinuationPools()
    net = dict.fromkeys("abcd", 0)  # the current attempt's contribution, per prompt
    for kind, uid, amount in history:
        before = pools.left(0)
        if kind == "begin":
            pools.begin(0, uid)
            net[uid] = 0
        elif kind == "give":
            pools.give(0, uid, amount)
            net[uid] += amount
        elif kind == "take":
            got = pools.take(0, uid, amount)
            assert got == min(amount, max(0.0, before))
            net[uid] -= got
        else:
            restored = ContinuationPools()
            restored.load_state_dict(pools.state_dict(), open_plans=[0])
            pools = restored
        assert pools.left(0) == sum(net.values())
    assert pools.close([0]) == max(0, sum(net.values()))


@pytest.mark.parametrize("damage", [
    lambda s: s["plans"].append({"id": 7, "nets": {}}),  # a plan the ledger does not hold open
    lambda s: s["plans"].append(dict(s["plans"][0])),  # the same plan twice
    lambda s: s["plans"][0]["nets"].update(a=float("nan")),
    lambda s: s["plans"][0]["nets"].update(a="lots"),
    lambda s: s["plans"][0].pop("nets"),
])
def test_a_damaged_pools_state_is_refused(damage):
    pools = ContinuationPools()
    pools.give(0, "a", 2)
    state = pools.state_dict()
    damage(state)
    with pytest.raises((ValueError, KeyError)):
        ContinuationPools().load_state_dict(state, open_plans=[0])
