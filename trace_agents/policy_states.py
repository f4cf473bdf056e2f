"""The policy's own hidden states as the features of `PolicyStatePredictor` (``predictor.kind: policy``).

The predictor reads prompts and prefixes by their texts; this registry maps each text the
allocator will ask about to the policy's last-layer state at the end of that text's token
prefix. The sampler fills it before the allocator asks:

- **Stage 1 candidates** were never sampled: each costs one probe, a one-token request with
  ``return_hidden_states`` (the in-process engine keeps the prefill in its prefix store, so an
  opened prompt's first turn then costs one token; SGLang's radix cache does the same).
- **Prefixes** are turn boundaries of played episodes: the in-process engine returns each turn's
  prompt state from the prefill it runs anyway (``Completion.prompt_state``, kept on the turn),
  so the state at a node is its next turn's; a node with no next turn, and every node on SGLang
  (which returns a prompt's state only for one-token requests), is probed.

Each step re-registers what it uses, so a state always comes from the policy that sampled the
step (an older one is overwritten, never reused); the registry keeps the most recent
``max_entries`` texts.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from trace_agents.backends.base import SamplingParams
from trace_agents.rollout import Episode, prefix_ids
from trace_allocation.tree import Node

PROBE = SamplingParams(temperature=0.0, max_tokens=1, return_hidden_states=True)


class PolicyStates:
    """``featurize(texts) -> [n, d]`` for `PolicyStatePredictor`, filled through a backend."""

    def __init__(self, backend: Any, *, max_entries: int = 20_000) -> None:
        self.backend = backend
        self.max_entries = max_entries
        self._states: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        self.stats = {"probes": 0, "probe_s": 0.0, "free": 0}
        """Probes sent and their seconds; states that came free with a turn's prefill."""

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        missing = [t for t in texts if t not in self._states]
        if missing:
            raise KeyError(f"no policy state registered for {len(missing)} text(s), e.g. "
                           f"{missing[0][:80]!r}: the sampler registers every text it plans with")
        return np.stack([self._states[t] for t in texts]) if texts else np.zeros((0, 0))

    def _keep(self, text: str, state: Sequence[float]) -> None:
        self._states[text] = np.asarray(state, dtype=np.float32)
        self._states.move_to_end(text)
        while len(self._states) > self.max_entries:
            self._states.popitem(last=False)

    async def probe(self, items: Iterable[tuple[str, Sequence[int]]]) -> None:
        """Register each (text, token ids) by a one-token request for its prompt state."""
        items = list(items)
        if not items:
            return
        started = time.perf_counter()
        outs = await asyncio.gather(*(self.backend.generate(list(ids), PROBE) for _, ids in items))
        for (text, _), out in zip(items, outs):
            if out.prompt_state is None:
                raise RuntimeError(f"{type(self.backend).__name__} returned no hidden state")
            self._keep(text, out.prompt_state)
        self.stats["probes"] += len(items)
        self.stats["probe_s"] += time.perf_counter() - started

    async def observe(self, episodes: Sequence[Episode]) -> None:
        """Register the states at every node the episodes passed: free from their turns' prefills
        where the engine returned them, probed otherwise."""
        todo: dict[str, Sequence[int]] = {}
        for e in episodes:
            node = e.start
            for turn, child in zip(e.turns, _below(e.start, e.leaf)):
                text = node.prefix_text
                if turn.prompt_state is not None:
                    self._keep(text, turn.prompt_state)
                    self.stats["free"] += 1
                    todo.pop(text, None)
                elif text not in self._states:
                    todo[text] = prefix_ids(node)
                node = child
            if e.leaf is not None and e.leaf.reward is None and e.leaf.prefix_text not in self._states:
                todo[e.leaf.prefix_text] = prefix_ids(e.leaf)  # a failed episode's last node
        await self.probe(todo.items())


def _below(start: Node, leaf: Node | None) -> list[Node]:
    """The nodes an episode added below ``start``, top down."""
    if leaf is None:
        return []
    path = leaf.path()
    return path[path.index(start) + 1:]


__all__ = ["PROBE", "PolicyStates"]
