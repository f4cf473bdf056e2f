"""Replay BFCL's ground-truth calls through `trace/BFCL-v0` and score them with BFCL's checker.

    python -m trace_envs.bfcl.replay [--subset base ...] [--limit N] [--json]

For every entry, each user turn's ground-truth call strings are parsed safely
(:func:`trace_envs.bfcl.calls.parse_call`), sent as one action of ``<tool_call>`` JSON blocks,
and the turn is closed with a plain reply. The env's reward is BFCL's verdict. As a reference,
the same ground truth is also handed to BFCL's checker directly ("oracle"): the env must score
1 wherever the oracle does.
"""

from __future__ import annotations

import argparse
import inspect
import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from trace_envs.bfcl.calls import parse_call
from trace_envs.bfcl.data import SUBSETS
from trace_envs.bfcl.env import BFCLEnv
from trace_envs.bfcl.backends import backend_class
from trace_envs.bfcl.verdict import bfcl_verdict
from trace_envs.tasks.base import Task

END_OF_TURN = "Done."


def ground_truth_actions(task: Task) -> list[str]:
    """One action per user turn: the turn's calls as ``<tool_call>`` blocks ("" if none)."""
    owner = task.metadata["owner"]

    def parameters(name: str) -> list[str]:
        method = getattr(backend_class(owner[name]), name)
        return list(inspect.signature(method).parameters)[1:]  # drop self

    actions = []
    for turn in task.answer:
        blocks = []
        for call in turn:
            name, arguments = parse_call(call, parameters)
            body = json.dumps({"name": name, "arguments": arguments})
            blocks.append(f"<tool_call>{body}</tool_call>")
        actions.append("\n".join(blocks))
    return actions


def replay_entry(env: BFCLEnv, task_id: str) -> tuple[float, dict[str, Any]]:
    """Play one entry's ground truth; return (reward, final info)."""
    env.reset(options={"task_id": task_id})
    info: dict[str, Any] = {}
    for action in ground_truth_actions(env.task):  # type: ignore[union-attr]
        if action:
            _, _, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                return 0.0, info
        _, reward, terminated, truncated, info = env.step(END_OF_TURN)
        if terminated or truncated:
            return float(reward), info
    return 0.0, info


def hidden_function_calls(task: Task) -> list[str]:
    """Ground-truth calls made before BFCL reveals their function (held out until a later turn).

    BFCL's executor runs any method of the class, revealed or not, so its checker accepts
    them; this env refuses calls to functions the model has not been shown.
    """
    reveal = {d["name"]: turn for turn, docs in task.metadata["held_out"].items() for d in docs}
    return [
        f"turn {t}: {call}"
        for t, turn in enumerate(task.answer)
        for call in turn
        if reveal.get(call.split("(", 1)[0].strip(), -1) > t
    ]


@dataclass
class SubsetReport:
    subset: str
    entries: int = 0
    env_passed: int = 0
    oracle_passed: int = 0
    seconds: float = 0.0
    failures: list[dict[str, Any]] = field(default_factory=list)
    """Entries the env failed although BFCL's checker accepts their ground truth, unexplained."""
    explained: list[dict[str, Any]] = field(default_factory=list)
    """Such entries whose ground truth calls a function before BFCL reveals it."""
    oracle_failures: list[str] = field(default_factory=list)

    @property
    def success_rate(self) -> float:
        return self.env_passed / self.entries if self.entries else 0.0


def replay_subset(subset: str, task_ids: Iterable[str] | None = None) -> SubsetReport:
    env = BFCLEnv(subset)
    ids = list(task_ids) if task_ids is not None else [t.id for t in env.tasks]
    report = SubsetReport(subset)
    start = time.perf_counter()
    for task_id in ids:
        task = env.tasks.get(task_id)
        oracle = bfcl_verdict([[turn] for turn in task.answer], task.answer, task.metadata["entry"])
        reward, info = replay_entry(env, task_id)
        report.entries += 1
        report.oracle_passed += bool(oracle["valid"])
        report.env_passed += reward == 1.0
        if not oracle["valid"]:
            report.oracle_failures.append(task_id)
        elif reward != 1.0:
            hidden = hidden_function_calls(task)
            if hidden:
                report.explained.append({"id": task_id, "hidden_function_calls": hidden})
            else:
                report.failures.append(
                    {"id": task_id, "bfcl": info.get("bfcl"), "error": info.get("error")}
                )
    report.seconds = time.perf_counter() - start
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subset", choices=SUBSETS, action="append")
    parser.add_argument("--limit", type=int, default=None, help="first N entries per subset")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args(argv)
    reports = []
    for subset in args.subset or SUBSETS:
        ids = None
        if args.limit is not None:
            ids = [t.id for t in BFCLEnv(subset).tasks][: args.limit]
        report = replay_subset(subset, ids)
        reports.append(report)
        print(f"{subset:>13}: env {report.env_passed}/{report.entries} "
              f"({100 * report.success_rate:.1f}%), BFCL oracle {report.oracle_passed}/"
              f"{report.entries}, {len(report.explained)} explained and "
              f"{len(report.failures)} unexplained env-only failures, {report.seconds:.1f} s")
        for failure in report.explained + report.failures[:5]:
            print("   ", json.dumps(failure)[:500])
    if args.json:
        summary = {r.subset: {**asdict(r), "success_rate": r.success_rate} for r in reports}
        print(json.dumps(summary))
    return 0 if all(not r.failures for r in reports) else 1


if __name__ == "__main__":
    raise SystemExit(main())
