import json

import pytest

from trace_agents.cli import main as cli
from trace_agents.evaluate import BENCHMARKS, resolve


def test_resolve_names_and_paths(tmp_path):
    assert resolve("bfcl_base").kwargs == {"subset": "base", "split": "test"}
    assert resolve("qa:/d/hotpot_dev.json").env_id == "trace/Search-v0"
    assert resolve(str(tmp_path / "aime.jsonl")).kwargs["suite"].endswith("aime.jsonl")
    with pytest.raises(ValueError, match="unknown benchmark"):
        resolve("nope")
    assert {"arithmetic", "champ", "multihop", "bfcl_miss_param"} <= set(BENCHMARKS)


def test_eval_cli_on_three_envs(capsys):
    code = cli(["eval", "--model", "tiny-qwen3", "--bench", "arithmetic", "--bench", "multihop",
                "--bench", "bfcl_base", "--limit", "2", "--max-tokens", "8", "--max-turns", "2",
                "--json"])
    assert code == 0
    reports = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["benchmarks"]
    assert [r["benchmark"] for r in reports] == ["arithmetic", "multihop", "bfcl_base"]
    for r in reports:
        assert r["tasks"] == 2 and r["episodes"] == 2 and 0.0 <= r["accuracy"] <= 1.0
    assert "em" in reports[1] and "f1" in reports[1]


def test_eval_cli_unknown_benchmark(capsys):
    assert cli(["eval", "--model", "tiny-qwen3", "--bench", "nope"]) == 2
