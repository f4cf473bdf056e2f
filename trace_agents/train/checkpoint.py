"""Checkpoints that resume a run exactly: weights, optimiser, predictor, every RNG, data position.

Written to ``DIR/checkpoint.tmp`` and renamed over ``DIR/checkpoint`` so a run killed while
saving keeps its previous checkpoint. Only safe formats: safetensors for tensors, JSON for the
rest, and the optimiser's state dict through ``torch.load(weights_only=True)``, which refuses
arbitrary pickled objects.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file, save_file

NAME = "checkpoint"


def _split_arrays(value: Any, arrays: dict[str, np.ndarray], path: str = "") -> Any:
    """JSON-able copy of ``value`` whose numpy arrays moved to ``arrays`` (saved as safetensors)."""
    if isinstance(value, np.ndarray):
        arrays[path] = np.ascontiguousarray(value)
        return {"__array__": path}
    if isinstance(value, Mapping):
        return {k: _split_arrays(v, arrays, f"{path}/{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_split_arrays(v, arrays, f"{path}/{i}") for i, v in enumerate(value)]
    return value


def _join_arrays(value: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__array__"}:
            return arrays[value["__array__"]]
        return {k: _join_arrays(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_join_arrays(v, arrays) for v in value]
    return value


def dump_state(value: Any, json_path: Path, arrays_path: Path) -> None:
    """JSON-able state whose numpy arrays (predictor weights) go to a safetensors file beside it."""
    arrays: dict[str, np.ndarray] = {}
    meta = _split_arrays(value, arrays)
    save_numpy(arrays, str(arrays_path))
    json_path.write_text(json.dumps(meta), encoding="utf-8")


def read_state(json_path: Path, arrays_path: Path) -> Any:
    """What :func:`dump_state` wrote; a clear error for a missing or corrupt file."""
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
        return _join_arrays(meta, load_numpy(str(arrays_path)))
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
        raise ValueError(f"corrupt or missing checkpoint state {json_path}: {type(exc).__name__}: {exc}") from None


def rng_state() -> dict[str, Any]:
    """Python's and numpy's global RNG states (torch's is saved apart, as a tensor)."""
    version, internal, gauss = random.getstate()
    return {
        "python": [version, list(internal), gauss],
        "numpy": np.random.get_state(legacy=False),
    }


def set_rng_state(state: Mapping[str, Any], torch_state: torch.Tensor) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(state["numpy"])
    torch.set_rng_state(torch_state)


@dataclass
class Loaded:
    step: int
    states: dict[str, Any]


def save_checkpoint(
    run_dir: Path,
    *,
    step: int,
    models: Mapping[str, torch.nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
    states: Mapping[str, Any],
) -> Path:
    """Save after ``step`` finished; ``states`` holds JSON-able state (predictors, data order)."""
    tmp, final = run_dir / f"{NAME}.tmp", run_dir / NAME
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, model in models.items():
        tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(tensors, str(tmp / f"model-{name}.safetensors"))
    for name, optimizer in optimizers.items():
        torch.save(optimizer.state_dict(), tmp / f"optim-{name}.pt")
    save_file({"torch_rng": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
    dump_state({"step": step, "rng": rng_state(), "states": dict(states)},
               tmp / "meta.json", tmp / "states.safetensors")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final


def load_checkpoint(
    run_dir: Path,
    *,
    models: Mapping[str, torch.nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
) -> Loaded:
    """Load weights and optimiser state in place, restore the RNGs; return step and states."""
    path = run_dir / NAME
    if not (path / "meta.json").is_file():
        raise FileNotFoundError(f"no checkpoint in {run_dir} (expected {path}/meta.json)")
    meta = read_state(path / "meta.json", path / "states.safetensors")  # before any model changes
    for name, model in models.items():
        model.load_state_dict(load_file(str(path / f"model-{name}.safetensors")))
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(torch.load(path / f"optim-{name}.pt", weights_only=True))
    set_rng_state(meta["rng"], load_file(str(path / "rng.safetensors"))["torch_rng"])
    return Loaded(int(meta["step"]), meta["states"])


def run_dir_of(path: str | Path) -> Path | None:
    """The run folder that ``path`` names (the run folder or its ``checkpoint`` folder), if it
    holds a finished checkpoint; else None."""
    path = Path(path)
    for run_dir in (path, path.parent):
        if (run_dir / NAME / "meta.json").is_file() and path.name in (run_dir.name, NAME):
            return run_dir
    return None


def trained_arms(run_dir: Path) -> list[str]:
    """The allocators ("arms") whose weights the run's checkpoint holds."""
    return sorted(p.name[len("model-"):-len(".safetensors")]
                  for p in (run_dir / NAME).glob("model-*.safetensors"))


def load_trained(run_dir: Path, arm: str, base_model: str, dtype: str = "auto") -> tuple[Any, Any]:
    """One arm's trained policy: the run's base model with the checkpoint's weights loaded."""
    from trace_agents.models import load_model

    model, tokenizer = load_model(base_model, dtype)
    model.load_state_dict(load_file(str(run_dir / NAME / f"model-{arm}.safetensors")))
    return model.eval(), tokenizer
