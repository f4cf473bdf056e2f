"""Reach ``fork``/``snapshot`` through Gymnasium wrappers, and give each sub-env of a vector env
its own task.

Gymnasium 1.x wrappers do not forward unknown attributes, so ``RecordEpisodeStatistics(env).fork``
is an AttributeError. The env itself is always ``wrapped.unwrapped``; :func:`fork` goes one better
and returns the fork inside copies of the same wrappers, so the branch records statistics,
limits time, etc. exactly as its parent does::

    env = RecordEpisodeStatistics(gym.make("trace/Calculator-v0"))
    branch = trace_envs.fork(env)                 # a RecordEpisodeStatistics around the fork
    data = trace_envs.unwrap_forkable(env).snapshot().to_bytes()

A vector env broadcasts one ``options`` dict to every sub-env; :func:`reset_tasks` resets each
sub-env to its own task id with Gymnasium's ``reset_mask``, so the vector env's own bookkeeping
(autoreset, terminations) stays right, in sync and async mode alike::

    envs = gym.make_vec("trace/Calculator-v0", num_envs=4)
    observations, infos = trace_envs.reset_tasks(envs, ["id-3", "id-7", "id-1", "id-3"], seed=0)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, TypeVar

import gymnasium as gym
import numpy as np

from trace_envs.core import ToolEnv

E = TypeVar("E", bound=gym.Env)


def unwrap_forkable(env: gym.Env) -> ToolEnv:
    """The `ToolEnv` under any stack of Gymnasium wrappers (``env.unwrapped``, type-checked)."""
    inner = env.unwrapped
    if not isinstance(inner, ToolEnv):
        raise TypeError(f"{type(inner).__name__} is not a trace-rl ToolEnv: it has no fork/snapshot")
    return inner


def fork(env: E) -> E:
    """Fork a possibly wrapped env: the `ToolEnv` is forked and every wrapper above it copied.

    Each wrapper's own state (episode statistics, step counters) is deep-copied so the branch
    and its parent do not share it; the wrapped env below it is the fork.
    """
    if isinstance(env, ToolEnv):
        return env.fork()
    if not isinstance(env, gym.Wrapper):
        raise TypeError(f"{type(env).__name__} is not a trace-rl ToolEnv or a wrapper around one")
    inner = fork(env.env)
    clone = copy.copy(env)
    for key, value in vars(env).items():
        if key != "env":
            setattr(clone, key, copy.deepcopy(value))
    clone.env = inner
    return clone


def reset_tasks(
    envs: gym.vector.VectorEnv,
    task_ids: Sequence[str | None],
    *,
    seed: int | Sequence[int | None] | None = None,
    options: dict[str, Any] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Reset sub-env ``i`` to ``task_ids[i]`` (``None``: a task drawn from its seed).

    Returns what ``envs.reset`` returns: every sub-env's observation, and infos merged over the
    per-env resets (each key's ``_key`` mask marks the envs that reported it).
    """
    n = envs.num_envs
    if len(task_ids) != n:
        raise ValueError(f"{len(task_ids)} task ids for {n} sub-envs")
    seeds = [None] * n if seed is None else [seed + i for i in range(n)] if isinstance(seed, int) else list(seed)
    observations, merged = None, {}
    for i, task_id in enumerate(task_ids):
        mask = np.zeros(n, dtype=np.bool_)
        mask[i] = True
        opts = {**(options or {}), "reset_mask": mask}
        if task_id is not None:
            opts["task_id"] = task_id
        observations, infos = envs.reset(seed=seeds, options=opts)
        _merge_infos(merged, infos)
    return observations, merged


def _merge_infos(merged: dict[str, Any], infos: dict[str, Any]) -> None:
    for key, value in infos.items():
        if key.startswith("_"):
            continue
        mask = infos.get(f"_{key}")
        if isinstance(value, dict):
            _merge_infos(merged.setdefault(key, {}), value)
        elif key not in merged or mask is None:
            merged[key] = copy.copy(value)
            if mask is not None:
                merged[f"_{key}"] = mask.copy()
        else:
            if merged[key].dtype != value.dtype:
                merged[key] = merged[key].astype(object)
            merged[key][mask] = value[mask]
            merged[f"_{key}"] |= mask
