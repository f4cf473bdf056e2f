"""Dotted command-line overrides of any config field, validated by the same pydantic model."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import assume, given
from hypothesis import strategies as st

from tests import fuzz
from trace_agents.cli import main as cli
from trace_agents.train.config import ConfigError, load_config


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"steps": 3, "optim": {"lr": 1e-5}, "env": {"kwargs": {"max_turns": 4}}}))
    return path


def test_overrides_reach_nested_fields(config_file: Path) -> None:
    cfg = load_config(config_file, dotted=[
        "optim.lr=1e-6", "budget.roots=8", "allocators=[trace]", "env.kwargs.suite=champ",
        "tracking.sinks=[tensorboard, wandb]", "model.name=tiny-qwen3", "steps=5",
    ])
    assert cfg.optim.lr == 1e-6 and cfg.budget.roots == 8 and cfg.allocators == ["trace"]
    assert cfg.env.kwargs == {"max_turns": 4, "suite": "champ"}  # the file's other keys stay
    assert cfg.tracking.sinks == ["tensorboard", "wandb"] and cfg.model.name == "tiny-qwen3"
    assert cfg.steps == 5


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "optim.lrr: Extra inputs are not permitted"),
    ("optim.lr=-1", "optim.lr: Input should be greater than 0"),
    ("budget.roots=many", "budget.roots: Input should be a valid integer"),
    ("allocators=[trace, ppo]", "allocators.1: Input should be"),
    ("optim.lr", "expected FIELD.PATH=VALUE"),
    ("optim..lr=1", "expected FIELD.PATH=VALUE"),
    ("steps.count=1", "steps is not a section"),
    ("optim.lr=[1", "not valid YAML"),
])
def test_bad_overrides_name_the_field(config_file: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as err:
        load_config(config_file, dotted=[override])
    assert message in str(err.value)


@given(st.floats(min_value=1e-12, max_value=10.0), st.integers(2, 10_000))
def test_any_valid_value_round_trips(lr: float, roots: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "empty.yaml"
        path.write_text("{}")
        got = load_config(path, dotted=[f"optim.lr={lr!r}", f"budget.roots={roots}", f"budget.m_max={roots}"])
    assert got.optim.lr == lr and got.budget.roots == roots


def test_the_train_command_reports_a_bad_override(config_file: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code = cli(["train", "--config", str(config_file), "--out", str(tmp_path / "run"), "optim.lr=-1"])
    assert code == 2
    printed = capsys.readouterr()
    assert "optim.lr" in printed.out + printed.err
    assert not (tmp_path / "run").exists()


def test_the_threads_flag_overrides_the_config(config_file: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    code = cli(["train", "--config", str(config_file), "--out", str(tmp_path / "run"), "--threads", "-1"])
    assert code == 2
    printed = capsys.readouterr()
    assert "threads: Input should be greater than or equal to 0" in printed.out + printed.err
    assert not (tmp_path / "run").exists()


@fuzz.examples(150)
@given(st.text(st.sampled_from("[]{}:,'\"*&!|>-@` \tx1\n"), max_size=12))
def test_a_malformed_override_or_config_is_one_line(text: str) -> None:
    """Whatever YAML fails to parse, as an override or as the config file, the message is one
    line (PyYAML's own spans several, with a caret under the spot)."""
    try:
        yaml.safe_load(text)
    except yaml.YAMLError:
        pass
    else:
        return
    assume(text.strip())  # an empty override is the empty string, not YAML
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text("{}")
        with pytest.raises(ConfigError) as override:
            load_config(path, dotted=[f"optim.lr={text}"])
        path.write_text(text)
        with pytest.raises(ConfigError) as config:
            load_config(path)
    for err in (override, config):
        assert "not valid YAML" in str(err.value) and "\n" not in str(err.value), str(err.value)
