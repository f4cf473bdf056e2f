"""Asynchronous steps (``pipeline.staleness``): the next step samples while this one ends, every
step keeps its own budget, stale tokens are corrected, and the pipeline drains at checkpoints."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz import examples
from tests.train.test_loop import config
from trace_agents.train.config import ConfigError, load_config
from trace_agents.train.loop import run
from trace_agents.train.loss import policy_loss
from trace_agents.train.update import Behaviour, stale_weights


def asynchronous(steps: int, checkpoint_every: int, launch: str = "ready", staleness: int = 1, **changes):
    return config(steps=steps, allocators=["trace"], checkpoint_every=checkpoint_every,
                  pipeline={"staleness": staleness, "launch": launch}, **changes)


@pytest.mark.parametrize(("launch", "staleness"), [("tail", 1), ("ready", 1), ("ready", 2)])
def test_overlapping_steps_keep_their_budgets_and_correct_stale_tokens(launch, staleness, tmp_path):
    cfg = asynchronous(steps=4, checkpoint_every=4, launch=launch, staleness=staleness)
    records = run(cfg, tmp_path, progress=False)
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    # steps sampling ahead when each step ends: as many as the bound allows, none past the drain
    assert [r["in_flight"] for r in records] == [min(staleness, 3 - k) for k in range(4)]
    for r in records:  # each step charged alone, never over its own budget
        assert 0 < r["cost_trajectory"] <= cfg.budget.total
        assert r["staleness_max"] <= staleness
        assert r["stale_dropped"] == 0  # the in-process engine reports every log-probability
    assert records[0]["stale_tokens"] == 0  # nothing was updated before step 0 sampled
    stale = [r for r in records if r["stale_tokens"]]
    assert stale, "step k+1 sampled beside step k: some of its tokens predate update k"
    for r in stale:
        assert 0 < r["stale_tokens"] <= r["trained_tokens"]
        assert 0 < r["stale_weight_mean"] <= cfg.optim.stale_weight_cap


def test_the_pipeline_drains_at_each_checkpoint_and_a_resume_goes_on(tmp_path):
    cfg = asynchronous(steps=4, checkpoint_every=2)
    first = run(cfg, tmp_path, stop_after=2, progress=False)
    assert [(r["step"], r["in_flight"]) for r in first] == [(0, 1), (1, 0)]
    resumed = run(cfg, tmp_path, resume=True, progress=False)
    assert [(r["step"], r["in_flight"]) for r in resumed] == [(0, 1), (1, 0), (2, 1), (3, 0)]
    assert resumed[2]["stale_tokens"] == 0  # the first step after a drain samples fresh


def test_a_failed_update_stops_the_sampling_in_flight(tmp_path, monkeypatch):
    from trace_agents.train.update import PolicyUpdater

    real = PolicyUpdater.update

    def failing(self, trees, *, version=0):
        if version == 1:
            raise RuntimeError("update exploded")
        return real(self, trees, version=version)

    monkeypatch.setattr(PolicyUpdater, "update", failing)
    with pytest.raises(RuntimeError, match="update exploded"):
        run(asynchronous(steps=4, checkpoint_every=4), tmp_path, progress=False)


def test_a_pipeline_that_could_never_overlap_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("pipeline: {staleness: 1}\n")
    with pytest.raises(ConfigError, match="checkpoint_every"):
        load_config(path)
    assert load_config(path, dotted=["checkpoint_every=4"]).pipeline.staleness == 1


finite = st.floats(-8.0, 0.0, allow_nan=False)


@examples(60)
@given(st.data(), st.integers(1, 4), st.integers(1, 12), st.floats(1.0, 4.0))
def test_stale_weights_correct_only_older_tokens(data, rows, width, cap):
    shape = (rows, width)
    cells = rows * width
    old = torch.tensor(data.draw(st.lists(finite, min_size=cells, max_size=cells))).view(shape)
    raw = data.draw(st.lists(st.one_of(finite, st.none()), min_size=cells, max_size=cells))
    logprobs = torch.tensor([math.nan if x is None else x for x in raw]).view(shape)
    version = torch.tensor(data.draw(st.lists(st.integers(0, 3), min_size=cells, max_size=cells))).view(shape)
    mask = torch.tensor(data.draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=cells, max_size=cells))).view(shape)
    current = data.draw(st.integers(0, 3))
    weights, kept, counts = stale_weights(old, Behaviour(logprobs, version), mask, current, cap)
    for i in range(rows):
        for t in range(width):
            stale = mask[i, t] == 1 and version[i, t] < current
            known = not math.isnan(logprobs[i, t])
            if stale and known:
                expected = min(math.exp(old[i, t] - logprobs[i, t]), cap)
                assert weights[i, t].item() == pytest.approx(expected, rel=1e-5)
            else:
                assert weights[i, t] == 1.0
            assert kept[i, t] == (0.0 if stale and not known else mask[i, t])
    assert counts["stale"] == float(((mask == 1) & (version < current)).sum())
    assert counts["staleness_max"] <= current


def test_unit_weights_leave_the_loss_unchanged():
    g = torch.Generator().manual_seed(0)
    new, old = -torch.rand(3, 5, generator=g), -torch.rand(3, 5, generator=g)
    adv, mask = torch.randn(3, 5, generator=g), (torch.rand(3, 5, generator=g) > 0.3).float()
    plain = policy_loss(new, old, adv, mask)
    weighted = policy_loss(new, old, adv, mask, weights=torch.ones(3, 5))
    assert torch.equal(plain.loss, weighted.loss)
    halved = policy_loss(new, old, adv, mask, weights=torch.full((3, 5), 0.5))
    assert halved.loss.item() == pytest.approx(plain.loss.item() / 2)


def test_a_server_engine_keeps_generating_through_the_update(tmp_path):
    """Through the stand-in SGLang server (its own copy of the start weights, synced from disk
    after each update while the next step's requests are in flight): the same guarantees."""
    from trace_agents.models import tiny_qwen3
    from trace_agents.testing.standin_server import StandinServer

    model, tokenizer = tiny_qwen3()
    with StandinServer(model, tokenizer) as server:
        cfg = asynchronous(steps=3, checkpoint_every=3, backend={"kind": "sglang", "url": server.url})
        records = run(cfg, tmp_path, progress=False)
        assert server.standin.weight_updates == 3  # every update reached the server
    assert [r["in_flight"] for r in records] == [1, 1, 0]
    for r in records:
        assert 0 < r["cost_trajectory"] <= cfg.budget.total
        assert r["staleness_max"] <= 1 and r["stale_dropped"] == 0
        assert r["weight_sync"] == "sglang"
