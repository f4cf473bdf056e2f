"""A recording as the replay world's data (`trace_allocation.replay`): the conversion lives here
because `trace_allocation` never imports `trace_agents`.

Failed episodes (reward None) are dropped: the simulator charges and rewards only episodes that
ended. Prefixes of one prompt with the same transcript are one state of the policy, so their
continuations are pooled. A prompt left with no ended bare rollout is dropped; one whose text
repeats another's is merged into it (the same prompt, sampled twice).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trace_agents.recording.format import (
    Outcome,
    PromptRecord,
    Recording,
    load_recording,
)
from trace_allocation.replay import ReplayPrefix, ReplayPrompt


def _arrays(outcomes: list[Outcome]) -> tuple[np.ndarray, np.ndarray]:
    ended = [o for o in outcomes if o.reward is not None]
    return (np.array([o.reward for o in ended], dtype=float),
            np.array([max(1, o.turns) for o in ended], dtype=float))


def _prompt(text: str, records: list[PromptRecord], hidden: np.ndarray) -> ReplayPrompt | None:
    continuations: dict[str, list[Outcome]] = {}
    states: dict[str, np.ndarray] = {}
    for p in records:
        for x in p.prefixes:
            continuations.setdefault(x.transcript, []).extend(x.continuations)
            states.setdefault(x.transcript, hidden[x.hidden_row])  # one state of the policy
    prefixes, index = [], {}
    for transcript, outcomes in continuations.items():
        rewards, turns = _arrays(outcomes)
        if rewards.size:
            index[transcript] = len(prefixes)
            prefixes.append(ReplayPrefix(transcript, rewards, turns, states[transcript]))
    paths, bare = [], []
    for p in records:
        for r, o in enumerate(p.bare):
            if o.reward is None:
                continue
            bare.append(o)
            own = sorted((x for x in p.prefixes if x.rollout == r and x.transcript in index), key=lambda x: x.depth)
            paths.append(tuple(dict.fromkeys(index[x.transcript] for x in own)))
    if not bare:
        return None
    rewards, turns = _arrays(bare)
    return ReplayPrompt(text, rewards, turns, tuple(paths), tuple(prefixes), hidden[records[0].hidden_row])


def replay_prompts(recording: Recording) -> list[ReplayPrompt]:
    """The recording's prompts as replay data, in the recording's order."""
    by_text: dict[str, list[PromptRecord]] = {}
    for p in recording.prompts:
        by_text.setdefault(p.prompt, []).append(p)
    prompts = [_prompt(text, records, recording.hidden) for text, records in by_text.items()]
    kept = [p for p in prompts if p is not None]
    if not kept:
        raise ValueError("the recording holds no ended bare rollout to replay")
    return kept


def load_replay(path: str | Path) -> list[ReplayPrompt]:
    """`load_recording(path)` (a folder or a subsample file) as replay data; ValueError for a
    missing, damaged or empty recording."""
    return replay_prompts(load_recording(path))
