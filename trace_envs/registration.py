"""Register tool envs with Gymnasium so ``gym.make("trace/<Name>-v0")`` builds them.

Gymnasium 1.x wrappers do not forward unknown attributes, so ``fork()``/``snapshot()`` would be
unreachable behind the default ``OrderEnforcing``/``PassiveEnvChecker`` wrappers. A `ToolEnv`
already refuses ``step`` before ``reset`` and its API conformance is checked by the test suite
with ``gymnasium.utils.env_checker.check_env``, so tool envs are registered without those two
wrappers and ``gym.make`` returns the env itself. Episode length is the env's ``max_turns``
(it is part of the snapshot), not a ``TimeLimit`` wrapper.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

NAMESPACE = "trace"


def register_env(name: str, entry_point: Any, *, version: int = 0, **default_kwargs: Any) -> str:
    """Register a `ToolEnv` subclass (or ``"module:Class"``) as ``trace/<name>-v<version>``.

    Returns the id for ``gym.make``; keyword arguments become defaults that ``gym.make``
    arguments override.
    """
    env_id = f"{NAMESPACE}/{name}-v{version}"
    gym.register(
        id=env_id,
        entry_point=entry_point,
        kwargs=default_kwargs,
        order_enforce=False,
        disable_env_checker=True,
    )
    return env_id
