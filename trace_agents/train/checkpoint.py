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
from safetensors.torch import load_file, save_file

NAME = "checkpoint"


def _to_json(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, Mapping):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if "__ndarray__" in value:
            return np.array(value["__ndarray__"], dtype=value["dtype"])
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def rng_state() -> dict[str, Any]:
    """Python's, numpy's global and torch's CPU RNG states (JSON-able but torch's)."""
    version, internal, gauss = random.getstate()
    return {
        "python": [version, list(internal), gauss],
        "numpy": _to_json(np.random.get_state(legacy=False)),
    }


def set_rng_state(state: Mapping[str, Any], torch_state: torch.Tensor) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(_from_json(state["numpy"]))
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
    meta = {"step": step, "rng": rng_state(), "states": _to_json(dict(states))}
    (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
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
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"corrupt checkpoint metadata in {path}: {exc}") from None
    for name, model in models.items():
        model.load_state_dict(load_file(str(path / f"model-{name}.safetensors")))
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(torch.load(path / f"optim-{name}.pt", weights_only=True))
    set_rng_state(meta["rng"], load_file(str(path / "rng.safetensors"))["torch_rng"])
    return Loaded(int(meta["step"]), _from_json(meta["states"]))
