"""The first hour's path: train a tiny run, evaluate what it saved, never lose a run."""

import io
import json
import time
from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file, save_file

import trace_agents.train.loop
from trace_agents.cli import main
from trace_agents.progress import Reporter
from trace_agents.train.checkpoint import load_trained, run_dir_of, trained_arms
from trace_agents.train.run_dir import RunExists, prepare

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "examples" / "tiny.yaml")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    import transformers

    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["train", "--config", TINY, "--out", str(out), "--steps", "1", "--no-progress"]) == 0
    assert not transformers.utils.logging.is_progress_bar_enabled()  # its loading bar too
    transformers.utils.logging.enable_progress_bar()
    return out


def test_eval_loads_what_train_saved(tiny_run, capsys):
    capsys.readouterr()
    code = main(["eval", "--model", str(tiny_run), "--bench", TINY, "--limit", "2",
                 "--max-tokens", "8", "--no-progress", "--json"])
    assert code == 0
    out, err = capsys.readouterr()
    reports = json.loads(out.strip().splitlines()[-1])["benchmarks"]
    assert [r["model"] for r in reports] == [f"{tiny_run}:trace", f"{tiny_run}:grpo"]
    assert all(r["tasks"] == 2 and r["benchmark"] == "tiny" for r in reports)
    assert "<= 2 turns of <= 8 tokens" in err  # the defaults in force are stated up front
    code = main(["eval", "--model", str(tiny_run / "checkpoint"), "--arm", "grpo",
                 "--bench", "arithmetic", "--limit", "1", "--max-tokens", "4", "--json"])
    assert code == 0
    reports = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["benchmarks"]
    assert [r["model"] for r in reports] == [f"{tiny_run}:grpo"]


def test_trained_weights_are_the_ones_evaluated(tiny_run, tmp_path):
    """Whatever the checkpoint holds is what eval runs (not the base model)."""
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    path = run / "checkpoint" / "model-trace.safetensors"
    changed = {k: v + 0.5 for k, v in load_file(str(path)).items()}
    save_file(changed, str(path))
    assert run_dir_of(run / "checkpoint") == run and trained_arms(run) == ["grpo", "trace"]
    model, _ = load_trained(run, "trace", "tiny-qwen3")
    state = model.state_dict()
    assert all(torch.equal(state[k], changed[k]) for k in changed)


def test_train_never_overwrites_a_run(tiny_run, capsys):
    before = (tiny_run / "metrics.jsonl").read_text()
    code = main(["train", "--config", TINY, "--out", str(tiny_run)])
    err = capsys.readouterr().err
    assert code == 2 and "--resume" in err and "--overwrite" in err
    assert (tiny_run / "metrics.jsonl").read_text() == before


def test_overwrite_only_replaces_a_run(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("mine")
    with pytest.raises(RunExists, match="holds no trace-rl run"):
        prepare(project, overwrite=True)
    assert (project / "notes.txt").exists()
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(RunExists, match="already holds a run"):
        prepare(run, overwrite=False)
    prepare(run, overwrite=True)
    assert not run.exists()


@pytest.mark.parametrize("existed", [False, True])
def test_a_failed_start_leaves_nothing_behind(existed, tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("out of memory while loading")

    monkeypatch.setattr(trace_agents.train.loop, "build_arms", broken)
    out = tmp_path / "run"
    if existed:
        out.mkdir()
    assert main(["train", "--config", TINY, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "out of memory while loading" in err and "--debug" in err
    assert out.exists() == existed and (not existed or not any(out.iterdir()))


def test_progress_without_a_terminal_prints_lines():
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=False)
    with Reporter("eval arithmetic", total=3, console=console, every_s=3600) as bar:
        for i in range(3):
            bar.advance(info=f"accuracy {i / 3:.2f}")
    assert buffer.getvalue().splitlines() == ["eval arithmetic: 3/3  accuracy 0.67  (0 s)"]
    slow = io.StringIO()  # nothing finishes for a while: the heartbeat still says it is alive
    with Reporter("eval slow", total=3, console=Console(file=slow), every_s=0.1):
        time.sleep(0.5)
    lines = slow.getvalue().splitlines()
    assert len(lines) >= 3 and all(line.startswith("eval slow: 0/3") for line in lines)
    silent = io.StringIO()
    with Reporter("x", total=1, console=Console(file=silent), enabled=False) as bar:
        bar.advance()
    assert silent.getvalue() == ""
