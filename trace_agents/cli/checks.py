"""Checks the commands run before loading a model, so a typo costs a second, not a model load.

Each raises `UserError` with a one- or two-line message that says what to change.
"""

from __future__ import annotations

from typing import Any

from trace_agents.cli import UserError

_GYM_SUFFIX = " was raised from the environment creator"


def _message(exc: BaseException) -> str:
    """The exception's own words: KeyError's unquoted, Gymnasium's creator suffix cut off."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return text.split(_GYM_SUFFIX)[0].strip().splitlines()[0] if text.strip() else type(exc).__name__


def make_env(env_id: str, kwargs: dict[str, Any], where: str = "env") -> Any:
    """``gym.make(env_id, **kwargs)``, or a UserError naming the id or option that is wrong."""
    import gymnasium as gym

    import trace_envs  # noqa: F401  (registers the envs)

    try:
        return gym.make(env_id, **kwargs)
    except gym.error.Error as exc:  # unknown id, namespace or version
        known = ", ".join(sorted(k for k in gym.registry if k.startswith("trace/")))
        raise UserError(f"{where}: {_message(exc)}\nregistered trace envs: {known}") from exc
    except ModuleNotFoundError as exc:  # "my_pkg:trace/My-v0" with a module that is not there
        raise UserError(f"{where} {env_id!r}: {_message(exc)}") from exc
    except (TypeError, ValueError, KeyError, OSError) as exc:
        options = ", ".join(sorted(kwargs)) or "no options"
        raise UserError(f"{where} {env_id} ({options}): {_message(exc)}") from exc


def check_model(name: str) -> None:
    from trace_agents.models import model_problem

    problem = model_problem(name)
    if problem:
        raise UserError(problem)


def check_backend(kind: str, url: str | None) -> None:
    if kind != "hf" and not url:
        raise UserError(f"--backend {kind} needs the server's address: add --url http://HOST:PORT "
                        "(or use --backend hf to run the model in this process)")
