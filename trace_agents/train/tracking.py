"""Optional metric sinks beside ``metrics.jsonl``: TensorBoard event files and Weights & Biases.

``metrics.jsonl`` stays the record of a run (plots and ``--resume`` read it); a sink gets every
record as it is appended. Scalars are logged per allocator (``trace/reward_mean``) against the
training step. W&B runs offline by default (files under ``<out>/wandb``; ``wandb sync`` uploads
them later), so nothing leaves the machine unless the config says ``wandb_mode: online``.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from trace_agents.train.config import TrackingConfig

WANDB_ID_FILE = "wandb_run_id"
"""Where a run directory keeps its W&B run id, so ``--resume`` continues the same W&B run."""


class MetricSink(Protocol):
    def log(self, record: Mapping[str, Any]) -> None: ...
    def close(self) -> None: ...


def scalars(record: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The record's finite numbers, nested dicts flattened with ``/`` (lists and text left out)."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key in ("step", "allocator"):
            continue
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(scalars(value, f"{name}/"))
        elif isinstance(value, bool | int | float) and math.isfinite(float(value)):
            out[name] = float(value)
    return out


class TensorBoardSink:
    def __init__(self, log_dir: Path, *, first_step: int = 0) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events a stopped run wrote past its checkpoint, as metrics.jsonl does.
        self.writer = SummaryWriter(str(log_dir), purge_step=first_step or None)

    def log(self, record: Mapping[str, Any]) -> None:
        group = record.get("allocator", "run")
        for name, value in scalars(record).items():
            self.writer.add_scalar(f"{group}/{name}", value, global_step=int(record["step"]))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    def __init__(self, out_dir: Path, cfg: TrackingConfig, config: Mapping[str, Any], *, resume: bool) -> None:
        import wandb

        id_file = out_dir / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if resume and id_file.exists() else secrets.token_hex(4)
        id_file.write_text(run_id)
        self.run = wandb.init(
            project=cfg.project, name=cfg.run_name or out_dir.name, dir=str(out_dir), id=run_id,
            resume="allow", mode=cfg.wandb_mode, config=dict(config),
            settings=wandb.Settings(console="off", silent=True),
        )
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")

    def log(self, record: Mapping[str, Any]) -> None:
        group = record.get("allocator", "run")
        values = {f"{group}/{k}": v for k, v in scalars(record).items()}
        self.run.log({**values, "step": int(record["step"])})

    def close(self) -> None:
        self.run.finish()


def open_sinks(cfg: TrackingConfig, out_dir: Path, *, config: Mapping[str, Any], first_step: int = 0,
               resume: bool = False) -> list[MetricSink]:
    sinks: list[MetricSink] = []
    try:
        if "tensorboard" in cfg.sinks:
            sinks.append(TensorBoardSink(out_dir / "tensorboard", first_step=first_step))
        if "wandb" in cfg.sinks:
            sinks.append(WandbSink(out_dir, cfg, config, resume=resume))
    except ImportError as exc:
        for sink in sinks:
            sink.close()
        raise ImportError(f"metric sink needs an optional package: pip install 'trace-rl[tracking]' ({exc})") from exc
    return sinks
