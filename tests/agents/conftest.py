"""Shared fixtures: the tiny offline Qwen3 and a stand-in server on loopback."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny():
    from trace_agents.models import tiny_qwen3

    return tiny_qwen3(seed=0)


@pytest.fixture(scope="session")
def standin(tiny):
    from trace_agents.testing.standin_server import StandinServer

    model, tokenizer = tiny
    with StandinServer(model, tokenizer, slow_s=6.0) as server:
        yield server


@pytest.fixture
def fresh_faults(standin):
    """Every test starts with no pending faults and leaves none behind."""
    standin.faults.pending.clear()
    yield standin.faults
    standin.faults.pending.clear()
