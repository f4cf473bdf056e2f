"""ChatFormat with a Qwen3-like template: the last assistant message is rendered unlike earlier
ones (an empty ``<think>`` block) and earlier thinking is dropped from history, so a
conversation's rendering is not a prefix of its extension's."""

from __future__ import annotations

import asyncio
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.agents.scripted_policies import chain_policy
from trace_agents.backends import ScriptedBackend
from trace_agents.react import ChatFormat, observation_content
from trace_agents.rollout import RolloutRunner, prefix_ids, prefix_messages
from trace_envs.calculator.env import CalculatorEnv

QWEN3_LIKE = (
    "{%- for m in messages %}"
    "{%- if m.role == 'assistant' %}"
    "{%- set content = m.content %}{%- set reasoning = '' %}"
    "{%- if '</think>' in content %}"
    "{%- set reasoning = content.split('</think>')[0].split('<think>')[-1].strip('\\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}"
    "{%- endif %}"
    "{%- if loop.last %}"
    "{{- '<|im_start|>assistant\\n<think>\\n' + reasoning + '\\n</think>\\n\\n' + content + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- else %}"
    "{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)
OBSERVATION_SEGMENT = ("<|im_end|>\n<|im_start|>user\n<tool_response>\n5\n</tool_response><|im_end|>\n"
                       "<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def qwen3_tok():
    from trace_agents.models import tiny_tokenizer

    tok = tiny_tokenizer()  # a fresh copy: the shared fixture's template stays ChatML
    tok.chat_template = QWEN3_LIKE
    return tok


def test_the_template_is_the_hard_case(qwen3_tok):
    fmt = ChatFormat(qwen3_tok)
    turn = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "<think>x</think>\na"}]
    ended = fmt.render(turn, generation_prompt=False)
    continued = fmt.render(turn + [{"role": "user", "content": "v"}], generation_prompt=True)
    assert not continued.startswith(ended) and "<think>" in ended and "<think>" not in continued


def test_segments_are_cut_from_a_conversation_that_goes_on(qwen3_tok):
    fmt = ChatFormat(qwen3_tok)
    action = qwen3_tok.encode("<think>hm</think>\n<answer>5</answer>", add_special_tokens=False)
    assert fmt.decode(fmt.observation_ids(action, "5")) == OBSERVATION_SEGMENT
    assert fmt.closer == "<|im_end|>\n" and fmt.decode(fmt.final_ids(action)) == "<|im_end|>\n"
    prompt = fmt.decode(fmt.prompt_ids([{"role": "user", "content": "q"}]))
    assert prompt == "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"


def test_a_model_emitted_end_of_turn_token_is_not_repeated(qwen3_tok):
    fmt = ChatFormat(qwen3_tok)
    action = qwen3_tok.encode("<answer>5</answer>", add_special_tokens=False) + [qwen3_tok.eos_token_id]
    assert fmt.decode(action + fmt.observation_ids(action, "5")) == "<answer>5</answer>" + OBSERVATION_SEGMENT
    assert fmt.decode(fmt.final_ids(action)) == "\n"
    assert fmt.action_text(action) == "<answer>5</answer>"


def test_template_kwargs_reach_every_rendering(qwen3_tok):
    fmt = ChatFormat(qwen3_tok, {"enable_thinking": False})
    empty_think = "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert fmt.decode(fmt.prompt_ids([{"role": "user", "content": "q"}])).endswith(empty_think)
    assert fmt.decode(fmt.observation_ids([], "5")).endswith(empty_think)


def test_templates_that_alter_content_or_are_missing_are_refused(qwen3_tok):
    class Dropping:
        chat_template = "drops content"
        eos_token_id = None

        def apply_chat_template(self, messages, **_):
            return "".join(m["role"] for m in messages)

    with pytest.raises(ValueError, match="verbatim"):
        ChatFormat(Dropping())
    with pytest.raises(ValueError, match="no chat template"):
        ChatFormat(type("Bare", (), {"chat_template": None})())


def test_rollout_prefixes_are_the_templates_rendering_with_the_models_thinking_kept(qwen3_tok):
    env = CalculatorEnv("arithmetic", suite_options={"size": 20, "seed": 0})
    answers = {t.prompt: t.answer for t in env.tasks}
    backend = ScriptedBackend(chain_policy(answers, steps=3), qwen3_tok)
    runner = RolloutRunner(backend, tokenizer=qwen3_tok, seed=0)
    tree = runner.new_tree(env, env.tasks[0].id)
    episodes = asyncio.run(runner.rollouts(tree, tree.root, 2))
    assert [e.status for e in episodes] == ["terminated"] * 2
    fmt = ChatFormat(qwen3_tok)
    inner = [n for n in tree.nodes() if not n.is_leaf and n.parent is not None]
    assert len(inner) == 2 * 3
    for node in inner:
        prefix = qwen3_tok.decode(prefix_ids(node))
        # the model's thinking stays as generated; the rest is exactly the template's rendering
        assert prefix.count("<think>step</think>\n") == len(node.path()) - 1
        assert prefix.replace("<think>step</think>\n", "") == fmt.render(prefix_messages(node), generation_prompt=True)
        assert prefix.endswith(observation_content(node.handle.observation) + "<|im_end|>\n<|im_start|>assistant\n")
    for leaf in tree.leaves():
        assert qwen3_tok.decode(list(leaf.handle.env_ids)) == "<|im_end|>\n"


def test_user_observations_are_plain_user_turns():
    from trace_agents.models import tiny_qwen3
    from trace_agents.react import ChatFormat

    _, tok = tiny_qwen3()
    fmt = ChatFormat(tok)
    action = fmt.encode("done")
    as_tool = fmt.decode(fmt.observation_ids(action, "Next request"))
    as_user = fmt.decode(fmt.observation_ids(action, "Next request", "user"))
    assert "<tool_response>\nNext request\n</tool_response>" in as_tool
    assert "<tool_response>" not in as_user and "user\nNext request<|im_end|>" in as_user
