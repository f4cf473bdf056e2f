import argparse
import json

from trace_agents.cli import COMMANDS
from trace_agents.cli import simulate as cli


def _run(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(argv)
    assert args.run(args) == 0


def test_simulate_json_last_line_and_outputs(capsys, tmp_path):
    _run(["simulate", "--quick", "--steps", "3", "--experiments", "a", "--json", "--out", str(tmp_path)])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("grpo", "pcl", "random_branch", "trace", "trace_oracle"):
        assert 0.0 <= result["effective_ratio"][key] <= 1.0
        assert result["cost"][key]["trajectory"] <= result["scenario"]["budget"]
    assert result["cost"]["dapo"]["trajectory"] > result["scenario"]["budget"]
    assert (tmp_path / "simulate.png").stat().st_size > 0
    assert json.loads((tmp_path / "simulate.json").read_text())["per_step"]["trace"]
    assert COMMANDS["simulate"] == "trace_agents.cli.simulate"
