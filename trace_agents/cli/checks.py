"""Checks the commands run before loading a model, so a typo costs a second, not a model load.

Each raises `UserError` with a one- or two-line message that says what to change.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
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


def model_loaders(model: str, arms: list[str] | None = None) -> list[tuple[str, Callable[[], Any]]]:
    """(label, loader) per policy that ``model`` names, checked without loading anything: a
    built-in model or Hugging Face folder, or each trained allocator ("arm") of a `trace-rl
    train` run folder (or its checkpoint folder), only those in ``arms`` when given."""
    from trace_agents.train.config import CONFIG_NAME, ConfigError, load_config

    run_dir = None
    if Path(model).is_dir():
        from trace_agents.train.checkpoint import run_dir_of

        run_dir = run_dir_of(model)
    if run_dir is None:
        from trace_agents.train.run_dir import holds_run

        if holds_run(Path(model)):
            raise UserError(f"{model} is a run without a checkpoint yet (none is saved before "
                            f"its first step ends): continue it with trace-rl train --resume")
        if arms:
            raise UserError(f"--arm needs a trace-rl train run folder; {model} is not one")
        check_model(model)

        def load() -> Any:
            from trace_agents.models import load_model

            return load_model(model)

        return [(model, load)]
    from trace_agents.train.checkpoint import load_trained, trained_arms

    try:
        cfg = load_config(run_dir / CONFIG_NAME)
    except ConfigError as exc:
        raise UserError(f"cannot read the run's config: {exc}") from None
    base = cfg.model
    check_model(base.name)
    saved = trained_arms(run_dir)
    known = [a for a in cfg.allocators if a in saved]
    unknown = sorted(set(arms or []) - set(known))
    if unknown:
        raise UserError(f"no trained {', '.join(unknown)} in {run_dir}: it holds {', '.join(known)}")
    return [(f"{run_dir}:{arm}", lambda arm=arm: load_trained(run_dir, arm, base.name, base.dtype))
            for arm in known if not arms or arm in arms]
