"""The verl runner with a real Hugging Face tokenizer (a byte-level BPE trained here, offline) and
a Qwen3-style template that renders the *last* assistant turn with an empty think block."""

from __future__ import annotations

import asyncio
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

from tests.verl.conftest import ScriptedServer, answer, calc, script, spec  # noqa: E402
from trace_agents.dialects import TextDialect  # noqa: E402
from trace_agents.react import initial_messages, observation_content  # noqa: E402
from trace_agents.verl import EpisodeRunner  # noqa: E402

TEMPLATE = (
    "{%- for m in messages %}{%- if m.role == 'assistant' and loop.last %}"
    "<|im_start|>assistant\n<think>\n\n</think>\n\n{{ m.content }}<|im_end|>\n"
    "{%- else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)


@pytest.fixture(scope="module")
def hf_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [calc("12*7"), "<answer>42</answer>", "<tool_response>\n84\n</tool_response>",
              "Solve the problem step by step with the calculator tool."] * 20
    tok.train_from_iterator(corpus, trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>")
    fast.chat_template = TEMPLATE
    return fast


def test_every_branch_prefix_is_the_templates_rendering_of_the_history(hf_tokenizer):
    server = ScriptedServer(hf_tokenizer, script(calc("6*7"), "no tags here", f"<answer>{answer()}</answer>"))
    server_eos = hf_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert server_eos == hf_tokenizer.eos_token_id

    async def generate(request_id, *, prompt_ids, sampling_params):  # the model ends turns with <|im_end|>
        out = await server.generate(request_id, prompt_ids=prompt_ids, sampling_params=sampling_params)
        out.token_ids[-1] = server_eos
        return out

    runner = EpisodeRunner(generate, TextDialect(hf_tokenizer), response_length=4096)
    ep = asyncio.run(runner.run(spec(), {}, prompt_key="p"))
    assert ep.reward == 1.0 and len(ep.turns) == 3

    env = spec().make()
    task_prompt, _ = env.reset(options={"task_id": spec().task_id})
    history = initial_messages(env, task_prompt)
    for turn in ep.turns[:-1]:
        history += [{"role": "assistant", "content": turn.action},
                    {"role": "user", "content": observation_content(turn.observation)}]
        rendered = hf_tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
        prefix = ep.prompt_ids + ep.response_ids[: turn.offset]
        assert hf_tokenizer.decode(prefix, skip_special_tokens=False) == rendered
    assert "<think>" not in hf_tokenizer.decode(ep.response_ids)
