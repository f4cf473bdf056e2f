"""Record a real policy's rollout trees densely, so allocators can be replayed at any budget.

Per prompt: ``bare`` rollouts from the root; then, for the first ``prefix_rollouts`` of them, every
non-final turn is a prefix and ``continuations`` episodes are sampled from each. Everything goes
through :class:`~trace_agents.rollout.RolloutRunner`'s public API with the in-process engine.

The prompts are the split's tasks in a seeded order, so the first N of any recording are a
uniform sample and a longer run extends a shorter one. Each prompt's tree draws its sampling
seeds from its own generator, seeded by ``(seed, index)``: a prompt's outcomes do not depend on
which chunk or run recorded it. Chunks are sampled one after another and written whole, and the
engine's prefix cache is dropped between them, so a run resumed after a kill writes the same
chunks as one that never stopped (bit for bit on CPU; a GPU's kernels need not be deterministic).

Hidden states are not taken from the sampler: after a chunk is sampled, one batched forward of
the policy's body (``model.base_model``, so the last layer after its final norm: what the LM head
reads) runs over each recorded rollout's token path up to its deepest prefix, and the states at
the prompt's last token and at every prefix's last token are kept, as float16.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trace_agents.backends.base import SamplingParams
from trace_agents.backends.hf import HFBackend
from trace_agents.rollout import Episode, RolloutRunner, start_of, token_path, transcript
from trace_agents.recording.format import (
    Meta, Outcome, Prefix, PromptRecord, Recording, chunk_files, chunk_path, read_chunk, write_chunk,
)
from trace_allocation.tree import Node, RolloutTree
from trace_envs import ToolEnv


@dataclass(frozen=True)
class Plan:
    """How densely each prompt is recorded, and in what pieces."""

    bare: int = 8
    prefix_rollouts: int = 2
    continuations: int = 2
    chunk: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("bare", "continuations", "chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1 (got {getattr(self, name)})")
        if not 0 <= self.prefix_rollouts <= self.bare:
            raise ValueError(f"prefix_rollouts must be between 0 and bare={self.bare} "
                             f"(got {self.prefix_rollouts})")


@dataclass
class _Sampled:
    """One prompt's tree as sampled, before its hidden states are computed."""

    index: int
    tree: RolloutTree
    bare: list[Episode]
    prefixes: list[tuple[int, Node, list[Episode]]] = field(default_factory=list)
    """(bare rollout index, prefix node, its continuations)."""


def task_order(tasks: int, seed: int) -> np.ndarray:
    """The order prompts are recorded in: a seeded permutation of the split's tasks."""
    return np.random.default_rng(seed).permutation(tasks)


def weights_digest(model: Any) -> str:
    """A short SHA-256 of the weights, to refuse resuming a recording with another policy."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _outcome(e: Episode) -> Outcome:
    reward = None if e.status == "failed" else float(e.reward or 0.0)
    return Outcome(reward=reward, status=e.status or "failed", turns=len(e.turns),
                   tokens=e.generated_tokens)


def _prefix_nodes(e: Episode) -> list[Node]:
    """The non-final turns of a bare rollout (a failed one's last completed turn included)."""
    if e.leaf is None:
        return []
    path = e.leaf.path()[1:]
    path = path if e.status == "failed" else path[:-1]
    return [n for n in path if not (n.handle.terminated or n.handle.truncated)]


async def _sample_prompt(runner: RolloutRunner, env: ToolEnv, index: int, task_id: str,
                         plan: Plan, on_episode: Callable[[Episode], None] | None) -> _Sampled:
    runner.rng = np.random.default_rng([plan.seed, index])  # the tree's seeds: (seed, index) only
    tree = runner.new_tree(env, task_id)
    bare = await runner.rollouts(tree, tree.root, plan.bare, on_episode=on_episode)
    starts = [(j, n) for j, e in enumerate(bare[: plan.prefix_rollouts]) for n in _prefix_nodes(e)]
    continued = await asyncio.gather(*(runner.rollouts(tree, n, plan.continuations, on_episode=on_episode)
                                       for _, n in starts))
    return _Sampled(index, tree, bare, [(j, n, c) for (j, n), c in zip(starts, continued)])


def _hidden_requests(s: _Sampled) -> list[tuple[list[int], list[int]]]:
    """(token ids, positions to keep) per forward this prompt needs: one per recorded rollout up
    to its deepest prefix; the prompt's own position rides on the first."""
    prompt_end = len(start_of(s.tree.root).prompt_ids) - 1
    by_rollout: dict[int, list[Node]] = {}
    for j, node, _ in s.prefixes:
        by_rollout.setdefault(j, []).append(node)
    if not by_rollout:
        return [(list(start_of(s.tree.root).prompt_ids), [prompt_end])]
    requests = []
    for k, nodes in enumerate(by_rollout.values()):
        ids = token_path(nodes[-1]).ids
        ends = [len(token_path(n).ids) - 1 for n in nodes]
        requests.append((ids, ([prompt_end] if k == 0 else []) + ends))
    return requests


def hidden_states(model: Any, requests: list[tuple[list[int], list[int]]],
                  batch: int) -> list[np.ndarray]:
    """Last-layer states of ``model`` at the given positions of each token sequence (right-padded
    batches of ``batch`` rows, longest first), as float16 ``[positions, hidden]`` per request."""
    import torch

    device = next(model.parameters()).device
    body = model.base_model
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i][0]))
    out: list[np.ndarray] = [np.zeros(0)] * len(requests)
    with torch.inference_mode():
        for start in range(0, len(order), batch):
            rows = order[start: start + batch]
            width = max(len(requests[i][0]) for i in rows)
            ids = torch.zeros((len(rows), width), dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):
                ids[r, : len(requests[i][0])] = torch.as_tensor(requests[i][0])
                mask[r, : len(requests[i][0])] = 1
            states = body(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
            for r, i in enumerate(rows):
                out[i] = states[r, requests[i][1]].float().cpu().numpy().astype(np.float16)
    return out


def _records(sampled: list[_Sampled], states: list[np.ndarray]) -> tuple[list[PromptRecord], np.ndarray]:
    """The chunk's records, their hidden rows in the order the records list them."""
    rows: list[np.ndarray] = []
    records, at = [], 0
    for s in sampled:
        n_requests = len(_hidden_requests(s))
        mine = np.concatenate(states[at: at + n_requests])
        at += n_requests
        start = start_of(s.tree.root)
        prompt_row = len(rows)
        rows += list(mine)
        prefixes = [Prefix(rollout=j, depth=len(node.path()) - 1, transcript=transcript(node),
                           tokens=len(token_path(node).ids), hidden_row=prompt_row + 1 + k,
                           continuations=[_outcome(e) for e in conts])
                    for k, (j, node, conts) in enumerate(s.prefixes)]
        records.append(PromptRecord(index=s.index, task_id=start.task_id, prompt=start.prompt,
                                    prompt_tokens=len(start.prompt_ids), hidden_row=prompt_row,
                                    bare=[_outcome(e) for e in s.bare], prefixes=prefixes))
    return records, np.stack(rows).astype(np.float16)


def _resume(out: Path, meta: Meta) -> int:
    """Chunks already recorded in ``out`` (validated), after checking they are this recording's."""
    meta_file = out / "meta.json"
    if not meta_file.exists():
        if any(out.iterdir()):
            raise ValueError(f"{out} is not empty and holds no recording: choose another folder")
        meta_file.write_text(json.dumps(meta.model_dump(), indent=1), encoding="utf-8")
        return 0
    try:
        theirs = Meta.model_validate_json(meta_file.read_bytes())
    except ValueError as exc:
        raise ValueError(f"{meta_file} is not a recording's meta: {exc}") from None
    differ = [k for k in Meta.model_fields if getattr(theirs, k) != getattr(meta, k)]
    if differ:
        raise ValueError(f"{out} holds a recording made with other settings ({', '.join(differ)}): "
                         "resume with the same ones, or record into another folder")
    files = chunk_files(out)
    for f in files:
        if read_chunk(f).meta != meta:
            raise ValueError(f"{f} belongs to another recording")
    return len(files)


def make_meta(label: str, model: Any, env: ToolEnv, env_spec: dict[str, Any],
              sampling: SamplingParams, dialect: str, plan: Plan) -> Meta:
    """What a recording of ``model`` (called ``label``) on ``env`` with this plan will hold."""
    return Meta(model=label, weights=weights_digest(model), env=env_spec, dialect=dialect,
                sampling={"temperature": sampling.temperature, "top_p": sampling.top_p,
                          "max_tokens": sampling.max_tokens},
                seed=plan.seed, bare=plan.bare, prefix_rollouts=plan.prefix_rollouts,
                continuations=plan.continuations, chunk=plan.chunk, tasks=len(env.tasks),
                hidden_size=int(model.config.hidden_size))


async def record(out: Path, model: Any, tokenizer: Any, env: ToolEnv, meta: Meta, *,
                 prompts: int, batch: int, max_seconds: float | None = None,
                 on_episode: Callable[[Episode], None] | None = None,
                 on_chunk: Callable[[int, list[PromptRecord], float], None] | None = None) -> int:
    """Record ``prompts`` prompts (rounded up to whole chunks, at most the split) into ``out``,
    continuing the chunks already there; returns how many prompts the folder holds.

    ``meta`` (:func:`make_meta`) says what is recorded and how: the plan, the sampling, the
    dialect; ``batch`` is the engine's batch rows and the hidden-state forward's. Past
    ``max_seconds`` no new chunk starts (what is written stays usable; a later call continues).
    ``on_chunk(k, records, seconds)`` follows each
    chunk written."""
    plan = Plan(meta.bare, meta.prefix_rollouts, meta.continuations, meta.chunk, meta.seed)
    out.mkdir(parents=True, exist_ok=True)
    done = _resume(out, meta)
    order = task_order(len(env.tasks), meta.seed)
    chunks = -(-min(prompts, len(order)) // plan.chunk)
    backend = HFBackend(model, tokenizer, max_batch=batch)
    runner = RolloutRunner(backend, tokenizer=tokenizer, sampling=SamplingParams(**meta.sampling),
                           max_concurrency=batch, dialect=meta.dialect)
    began = time.perf_counter()
    try:
        for k in range(done, chunks):
            started = time.perf_counter()
            if max_seconds is not None and started - began >= max_seconds:
                break
            backend.flush_cache()  # every chunk starts from the same engine state
            indices = range(k * plan.chunk, min((k + 1) * plan.chunk, len(order)))
            sampled = await asyncio.gather(*(
                _sample_prompt(runner, env, i, env.tasks[int(order[i])].id, plan, on_episode)
                for i in indices))
            requests = [r for s in sampled for r in _hidden_requests(s)]
            records, hidden = _records(list(sampled), hidden_states(model, requests, batch))
            write_chunk(chunk_path(out, k), Recording(meta, records, hidden))
            done = k + 1
            if on_chunk is not None:
                on_chunk(k, records, time.perf_counter() - started)
    finally:
        await backend.aclose()
        runner.env_pool.shutdown(wait=False, cancel_futures=True)
    return min(done * plan.chunk, len(order))
