"""Shared fixtures: the tiny offline Qwen3 (random init, local tokenizer)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def tiny():
    from trace_agents.models import tiny_qwen3

    return tiny_qwen3(seed=0)
