"""Per-turn cost of each dialect: parse a reply and cut the tokens after it (CPU, offline).

    python benchmarks/dialect_bench.py [--turns 200] [--json]

Uses the families' real chat templates (the trl wheel's, or those shipped with the dialects) on
the project's tiny tokenizer (``tests/agents/family_tokenizers.py``) and a search-env turn with two
parallel calls where the format allows them. Prints milliseconds per turn for parsing and for the
observation segment.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.agents.family_tokenizers import TEMPLATES, family_tokenizer  # noqa: E402
from trace_agents.dialects import make_dialect  # noqa: E402
from trace_agents.models import tiny_tokenizer  # noqa: E402
from trace_envs.actions import ToolCall  # noqa: E402
from trace_envs.search.env import SearchEnv  # noqa: E402
from trace_envs.structured import AssistantMessage  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    env = SearchEnv(suite_options={"people": 20, "questions": 30, "seed": 1})
    env.reset(seed=0)
    rows = []
    dialects = {"react": make_dialect(tiny_tokenizer())}
    dialects.update({f: make_dialect(family_tokenizer(f)) for f in TEMPLATES})
    for name, d in dialects.items():
        n_calls = 1 if getattr(d, "one_call_per_message", False) else 2
        calls = tuple(ToolCall("search", {"query": q, "topk": 2}) for q in ("capital city", "born")[:n_calls])
        text = d.render_action(AssistantMessage("Looking it up.", calls))
        ids = d.encode(text)
        action = d.parse(text, env)
        obs, _, _, _, info = env.fork().step(action)
        started = time.perf_counter()
        for _ in range(args.turns):
            d.parse(text, env)
        parse_ms = (time.perf_counter() - started) * 1000 / args.turns
        started = time.perf_counter()
        for _ in range(args.turns):
            d.after_action_ids(ids, action, obs, info)
        tail_ms = (time.perf_counter() - started) * 1000 / args.turns
        rows.append({"dialect": name, "calls": n_calls, "parse_ms": round(parse_ms, 3),
                     "segment_ms": round(tail_ms, 3)})
    if args.json:
        print(json.dumps(rows))
        return
    print(f"{'dialect':<16} {'calls':>5} {'parse ms':>9} {'segment ms':>11}")
    for r in rows:
        print(f"{r['dialect']:<16} {r['calls']:>5} {r['parse_ms']:>9.3f} {r['segment_ms']:>11.3f}")


if __name__ == "__main__":
    main()
