"""Every dialect with the real chat template of its family (from the trl wheel), offline.

Round trips render -> parse (parallel calls, string vs number arguments, unicode), malformed
replies -> error observations, whole calculator / search / BFCL episodes whose token record is the
template's own rendering of the same messages, and branches that resend their parent's prefix.
"""

from __future__ import annotations

import asyncio
import os

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("trl")

from tests.agents.family_tokenizers import EXTRA_TEMPLATES, TEMPLATE_KWARGS, TEMPLATES, family_tokenizer, template_text
from trace_agents.backends import SamplingParams, ScriptedBackend
from trace_agents.dialects import TextDialect, detect, make_dialect
from trace_agents.dialects.base import template_parser
from trace_agents.dialects.families import FAMILIES as FAMILY_CLASSES
from trace_agents.rollout import RolloutRunner, prefix_ids, prefix_messages, token_path
from trace_envs.actions import ToolCall, parse_action
from trace_envs.calculator.env import CalculatorEnv
from trace_envs.search.env import SearchEnv
from trace_envs.structured import AssistantMessage

FAMILIES = [f for f in TEMPLATES if template_parser() or FAMILY_CLASSES[f].trl_schema]
"""Families this transformers parses: all from 5.15 on; before it (verl's venv), those with a
legacy response schema in trl."""
MULTI_CALL = {"hermes", "qwen3_xml", "glm4", "gemma4", "lfm2", "llama4_pythonic", "mistral",
              "deepseek_v3", "kimi_k2", "granite", "xlam", "minimax_m2"}
"""Families whose format holds several calls in one reply (Llama 3.x and harmony: one)."""
ENDS = {"harmony": ("<|call|>", "<|return|>"), "glm4": ("<|observation|>", "<|user|>"),
        "gemma4": ("<|tool_response>", "<turn|>")}
"""How the model ends a turn with a call / a reply (others: the eos token)."""
NO_THINKING = {"llama3_json", "gemma4", "llama4_pythonic", "deepseek_v3", "kimi_k2", "granite", "xlam"}
"""Families whose template renders no thinking of a reply without a call (Gemma 4: only beside
a call)."""


@pytest.fixture(scope="module")
def dialects():
    return {f: make_dialect(family_tokenizer(f)) for f in FAMILIES}


@pytest.fixture(scope="module")
def search_env():
    env = SearchEnv(suite_options={"people": 20, "questions": 30, "seed": 1})
    env.reset(seed=0)
    return env


# ---------------------------------------------------------------------------- choosing one
@pytest.mark.parametrize("template, expected", [
    *((TEMPLATES[d][0], d) for d in TEMPLATES), *EXTRA_TEMPLATES.items(),
])
def test_the_dialect_is_detected_from_the_chat_template(template, expected):
    assert detect(template_text(template)) == expected


def test_templates_without_tools_get_the_text_dialect():
    from trace_agents.models import CHATML_TEMPLATE, tiny_tokenizer

    assert detect(CHATML_TEMPLATE) == "react" and detect(None) == "react"
    assert isinstance(make_dialect(tiny_tokenizer()), TextDialect)
    with pytest.raises(ValueError, match="unknown dialect"):
        make_dialect(tiny_tokenizer(), "klingon")


def test_a_dialect_can_be_named_in_the_config():
    from trace_agents.train.config import TrainConfig

    assert TrainConfig.model_validate({"model": {"dialect": "harmony"}}).model.dialect == "harmony"
    with pytest.raises(ValueError, match="unknown dialect"):
        TrainConfig.model_validate({"model": {"dialect": "klingon"}})


@pytest.mark.skipif(template_parser(), reason="transformers parses every family's template")
@pytest.mark.parametrize("family", sorted(set(TEMPLATES) - set(FAMILIES)))
def test_a_family_this_transformers_cannot_parse_is_a_clear_error(family):
    with pytest.raises(RuntimeError, match="needs transformers>=5.15"):
        make_dialect(family_tokenizer(family))


# ------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_shows_tools_with_argument_descriptions_through_the_template(dialects, family, search_env):
    d = dialects[family]
    prompt = d.decode(d.initial_ids(search_env, "Who?"))
    assert "How many passages to return" in prompt and "search" in prompt and "Who?" in prompt
    assert prompt.endswith(d.generation_prompt)


_values = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="<>"),
                  min_size=1, max_size=12).map(str.strip).filter(bool)


UNESCAPED = {"lfm2"}
"""Families whose template writes a string argument between ``'`` as it is, unescaped: a value
with a quote or a backslash is not rendered as the model would read it back."""


@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(queries=st.lists(_values | st.integers(0, 99_999).map(str), min_size=1, max_size=3),
       topk=st.integers(1, 10))
def test_render_then_parse_gives_the_same_calls(dialects, search_env, family, queries, topk):
    """String arguments stay strings even when they look like numbers ("75001"), numbers stay
    numbers, unicode survives, parallel calls keep their order."""
    d = dialects[family]
    if family not in MULTI_CALL:
        queries = queries[:1]
    if family in UNESCAPED:
        assume(not any(c in q for q in queries for c in "'\\"))
    calls = tuple(ToolCall("search", {"query": q, "topk": topk}) for q in queries)
    parsed = d.parse(d.render_action(AssistantMessage(tool_calls=calls)), search_env)
    assert parsed.tool_calls == calls


@pytest.mark.parametrize("family", FAMILIES)
def test_thinking_and_a_final_reply_round_trip(dialects, family):
    d = dialects[family]
    message = AssistantMessage("Die Antwort ist <answer>Zoë</answer>", reasoning="erst denken")
    parsed = d.parse(d.render_action(message))
    assert parsed.content == message.content and not parsed.tool_calls
    if family not in NO_THINKING:
        assert parsed.reasoning == "erst denken"


MALFORMED = {
    "hermes": '<tool_call>\n{"name": "search", "arguments": {"query": }\n</tool_call>',
    "qwen3_xml": "<tool_call>\n<function=search>\n<parameter=query>\nx\n</function>\n</tool_call>",
    "llama3_json": '{"name": "search", "parameters": {"query": }}',
    "harmony": "<|channel|>analysis<|message|>t<|end|><|start|>assistant to=functions.search"
               '<|channel|>commentary json<|message|>{"query": ',
    "glm4": "<tool_call>search\n<arg_key>query</arg_key>\n<arg_value>x\n</tool_call>",
    "gemma4": '<|tool_call>call:search{query:<|"|>x,topk:}<tool_call|>',
    "lfm2": "<|tool_call_start|>[search(query='x', topk=)]<|tool_call_end|>",
    "llama4_pythonic": '[search(query="x", topk=)]',
    "mistral": '[TOOL_CALLS]search[ARGS]{"query": }',
    "deepseek_v3": '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>search<｜tool▁sep｜>{"query": }<｜tool▁call▁end｜>'
                   "<｜tool▁calls▁end｜>",
    "granite": '<tool_call>\n{"name": "search", "arguments": {"query": }\n</tool_call>',
    "xlam": '[{"name": "search", "arguments": {"query": }}]',
    "minimax_m2": '<minimax:tool_call>\n<invoke name="search">\n<parameter name="query">x\n</invoke>\n'
                  "</minimax:tool_call>",
    "kimi_k2": '<|tool_calls_section_begin|><|tool_call_begin|>functions.search:0<|tool_call_argument_begin|>'
               '{"query": }<|tool_call_end|><|tool_calls_section_end|>',
}


@pytest.mark.parametrize("family", FAMILIES)
def test_a_malformed_call_is_an_error_observation(dialects, family, search_env):
    d = dialects[family]
    parsed = d.parse(MALFORMED[family], search_env)
    obs, reward, terminated, _, info = search_env.fork().step(parsed)
    assert obs.startswith("Error: ") and "malformed tool call" in info["error"]
    assert not terminated and reward == 0.0
    tail = d.decode(d.after_action_ids(d.encode(MALFORMED[family]), parsed, obs, info))
    assert obs in tail and tail.endswith(d.generation_prompt)  # the model reads it next turn


PUBLISHED_FORMS = [
    # OpenAI's harmony guide: the recipient in the channel header, with <|constrain|>
    ("harmony", '<|channel|>commentary to=functions.calculator <|constrain|>json<|message|>'
                '{"expression": "2*3"}<|call|>'),
    ("harmony", '<|channel|>commentary to=functions.calculator<|message|>{"expression": "2*3"}<|call|>'),
    ("harmony", '<|channel|>analysis<|message|>multiply<|end|><|start|>assistant<|channel|>commentary '
                'to=functions.calculator <|constrain|>json<|message|>{"expression": "2*3"}<|call|>'),
    ("harmony", ' to=functions.calculator<|channel|>commentary <|constrain|>json<|message|>'
                '{"expression": "2*3"}<|call|>'),
    # Llama 3.x replies beside Meta's {"name", "parameters"}
    ("llama3_json", '{"name": "calculator", "arguments": {"expression": "2*3"}}'),
    ("llama3_json", '{"type": "function", "name": "calculator", "parameters": {"expression": "2*3"}}'),
    ("llama3_json", '{ "name": "calculator", "parameters": {"expression": "2*3"}}'),
    # GLM-4.7: no newlines between the name and the arguments
    ("glm4", "<tool_call>calculator<arg_key>expression</arg_key><arg_value>2*3</arg_value></tool_call>"),
    # LFM2: double-quoted strings, spaces inside the list
    ("lfm2", '<|tool_call_start|>[ calculator(expression="2*3") ]<|tool_call_end|>'),
    # Llama 4: single-quoted strings (Meta's guide shows both), text on a line before the list
    ("llama4_pythonic", "Let me compute.\n[calculator(expression='2*3')]"),
    # Mistral's v11 tokenizer (Mistral Small 3.1, Devstral Small 1.x): no [ARGS]
    ("mistral", '[TOOL_CALLS]calculator{"expression": "2*3"}'),
    # DeepSeek-V3 and R1-0528: a "function" type and the arguments in a fenced JSON block
    ("deepseek_v3", '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>calculator\n```json\n'
                    '{"expression": "2*3"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>'),
    # Kimi-K2: a space after the id (vLLM's tests), a bare name
    ("kimi_k2", '<|tool_calls_section_begin|><|tool_call_begin|>functions.calculator:3 <|tool_call_argument_begin|>'
                '{"expression": "2*3"}<|tool_call_end|><|tool_calls_section_end|>'),
    ("kimi_k2", '<|tool_call_begin|>calculator<|tool_call_argument_begin|>{"expression": "2*3"}<|tool_call_end|>'),
]


@pytest.mark.parametrize("family, reply", [f for f in PUBLISHED_FORMS if f[0] in FAMILIES])
def test_every_published_call_form_is_read(dialects, family, reply):
    env = CalculatorEnv()
    env.reset(seed=0)
    action = dialects[family].parse(reply, env)
    if template_parser():
        assert [(c.name, c.arguments, c.error) for c in action.tool_calls] == [
            ("calculator", {"expression": "2*3"}, None)]
    else:  # trl's legacy schemas know only the template's own form: an error the model reads, never a final answer
        assert action.tool_calls


@pytest.mark.parametrize("family", FAMILIES)
def test_a_call_cut_off_after_its_tag_is_an_error_not_an_answer(dialects, family):
    dialect, env = dialects[family], CalculatorEnv()
    env.reset(seed=0)
    call = dialect.render_action(AssistantMessage("", (ToolCall("calculator", {"expression": "2*3"}),)))
    opened = dialect._call_marker.search(call)
    assert opened is not None
    for cut in (opened.end(), opened.end() + 3):
        observation, reward, terminated, truncated, info = env.step(dialect.parse(call[:cut], env))
        assert not terminated and "error" in info, (call[:cut], observation)
        env.reset(seed=0)


@pytest.mark.parametrize("family", sorted(MULTI_CALL & set(FAMILIES)))
def test_a_good_call_beside_a_malformed_one_still_runs(dialects, family, search_env):
    d = dialects[family]
    good = d.render_action(AssistantMessage(tool_calls=(ToolCall("search", {"query": "capital"}),)))
    _, _, _, _, info = search_env.fork().step(d.parse(good + "\n" + MALFORMED[family], search_env))
    first, second = info["tool_results"]
    assert first["content"].startswith("Doc 1") and second["content"].startswith("Error: ")


@pytest.mark.parametrize("family", [f for f in FAMILIES if FAMILY_CLASSES[f].call_lists])
def test_calls_past_the_limit_in_one_list_are_counted_not_run(dialects, family):
    """A family that writes its calls as one list: the env's per-turn limit still holds."""
    d, env = dialects[family], CalculatorEnv()
    env.reset(seed=0)
    env.max_calls_per_turn = 3
    calls = tuple(ToolCall("calculator", {"expression": f"{i}+1"}) for i in range(10))
    action = d.parse(d.render_action(AssistantMessage(tool_calls=calls)), env)
    assert action.tool_calls[:3] == calls[:3] and all(c.error == "not run" for c in action.tool_calls[3:])
    observation, *_ = env.step(action)
    assert "10 tool calls in one action; only the first 3 were run" in observation


@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=80) | st.lists(st.sampled_from(
    ["<tool_call>", "</tool_call>", "{", '"name": "search"', "<function=search>", "<parameter=query>",
     "</parameter>", "<arg_key>", "<arg_value>", "<|channel|>", "<|message|>", "to=functions.search",
     "<|call|>", '{"name": "search", "parameters": ', "}", "<think>", "</think>", "x"]),
    max_size=12).map("".join))
def test_any_reply_parses_to_something_the_env_answers(dialects, search_env, family, text):
    d = dialects[family]
    parsed = d.parse(text, search_env)
    obs, _, terminated, truncated, info = search_env.fork().step(parsed)  # never raises
    d.after_action_ids(d.encode(text), parsed, None if terminated or truncated else obs, info)


# --------------------------------------------------------------------------- episodes
def scripted(dialect, messages, family):
    """A backend that writes ``messages`` in the dialect, each ended as the family's model ends
    it; the next one is the first not yet in the context after the prompt."""
    call_end, reply_end = ENDS.get(family, (dialect.tokenizer.eos_token,) * 2)
    texts = [dialect.render_action(m) + (call_end if m.tool_calls else reply_end) for m in messages]
    state = {"start": 0, "prompts": []}

    def policy(context, params):
        pos, i = state["start"], 0
        while i < len(texts) and (k := context.find(texts[i], pos)) >= 0:
            pos, i = k + len(texts[i]), i + 1
        return texts[min(i, len(texts) - 1)]

    class Recording(ScriptedBackend):
        async def generate(self, prompt, params):
            state["prompts"].append(list(prompt))
            return await super().generate(prompt, params)

    return Recording(policy, dialect.tokenizer), state


def play(dialect, env, task_id, messages, family):
    backend, state = scripted(dialect, messages, family)
    runner = RolloutRunner(backend, tokenizer=dialect.tokenizer, dialect=dialect, seed=0,
                           sampling=SamplingParams(max_tokens=4096))
    tree = runner.new_tree(env, task_id)
    state["start"] = len(dialect.decode(list(tree.root.handle.prompt_ids)))
    (episode,) = asyncio.run(runner.rollouts(tree, tree.root, 1))
    return runner, tree, episode, state


def assert_record_is_the_templates_rendering(dialect, tree, env, family):
    """The token prefix of every inner node is the template's rendering of the same messages
    (tools included). Model tokens are kept as generated where a template rewrites history:
    Qwen3 and Qwen3.5 drop the (here empty) think block of earlier turns, and harmony writes
    <|end|> where the model ended a reply with <|return|>."""
    inner = [n for n in tree.nodes() if n.parent is not None and not n.is_leaf]
    assert inner
    for node in inner:
        got = dialect.decode(prefix_ids(node))
        want = dialect.render(prefix_messages(node), tools=env.tool_schemas(), generation_prompt=True)
        if family in ("hermes", "qwen3_xml", "minimax_m2"):
            got, want = (t.replace("<think>\n\n</think>\n\n", "") for t in (got, want))
        if family == "harmony":
            got = got.replace("<|return|>", "<|end|>")
        assert got == want


def one_call_per_message(messages, family):
    if family in MULTI_CALL:
        return messages
    return [AssistantMessage(m.content, (c,)) for m in messages for c in m.tool_calls] or messages


@pytest.mark.parametrize("family", FAMILIES)
def test_calculator_episode_is_rendered_by_the_template(dialects, family):
    d = dialects[family]
    env = CalculatorEnv(suite_options={"size": 20, "seed": 0})
    task = env.tasks[0]
    messages = env.demonstration(task)
    runner, tree, episode, _ = play(d, env, task.id, messages, family)
    assert (episode.status, episode.reward, len(episode.turns)) == ("terminated", 1.0, 2)
    assert_record_is_the_templates_rendering(d, tree, env, family)
    # every engine is told to end the turn at the dialect's end-of-turn tokens, not only at eos
    # (harmony's <|end|> excepted: the analysis message ends with it, the call follows)
    assert set(runner.sampling.stop_token_ids) == d.stop_ids and set(d.stop) <= set(runner.sampling.stop)
    assert d.stop_ids == d.end_ids - ({d.encode("<|end|>")[0]} if family == "harmony" else set())


@pytest.mark.parametrize("family", FAMILIES)
def test_search_episode_is_rendered_by_the_template(dialects, search_env, family):
    d = dialects[family]
    task = search_env.tasks[0]
    first_hop = task.prompt.rstrip("?")
    calls = tuple(ToolCall("search", {"query": q, "topk": 2}) for q in (first_hop, "born"))
    # Gemma 4's template writes text beside a call after the call's results: none here
    thought = "" if family == "gemma4" else "Looking it up."
    messages = one_call_per_message([AssistantMessage(thought, calls)], family)
    messages.append(AssistantMessage(f"<answer>{task.answer[0]}</answer>"))
    _, tree, episode, _ = play(d, search_env.fork(), task.id, messages, family)
    assert (episode.status, episode.reward) == ("terminated", 1.0)
    leaf_info = [n.handle.info for n in tree.nodes() if n.parent is not None]
    assert all("error" not in i for i in leaf_info)
    assert_record_is_the_templates_rendering(d, tree, search_env, family)


def bfcl_episode(family):
    """BFCL's first base entry, its ground-truth calls written as messages, each user turn ended
    by a reply without a call."""
    pytest.importorskip("bfcl_eval")
    import gymnasium as gym

    from trace_envs.bfcl.replay import END_OF_TURN, ground_truth_actions

    env = gym.make("trace/BFCL-v0", subset="base").unwrapped
    task = env.tasks.get("multi_turn_base_0")
    messages = []
    for text in ground_truth_actions(task):
        if text:
            messages += one_call_per_message([AssistantMessage(tool_calls=parse_action(text).tool_calls)], family)
        messages.append(AssistantMessage(END_OF_TURN))
    return env, task, messages


@pytest.mark.parametrize("family", FAMILIES)
def test_bfcl_episode_is_rendered_by_the_template(dialects, family):
    d = dialects[family]
    env, task, messages = bfcl_episode(family)
    _, tree, episode, _ = play(d, env, task.id, messages, family)
    assert (episode.status, episode.reward) == ("terminated", 1.0), episode.error
    assert_record_is_the_templates_rendering(d, tree, env, family)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_branch_resends_its_parents_exact_token_prefix(dialects, family):
    d = dialects[family]
    env = CalculatorEnv(suite_options={"size": 20, "seed": 0})
    task = env.tasks[1]
    messages = [AssistantMessage(tool_calls=(ToolCall("calculator", {"expression": e}),))
                for e in ("2 + 3", "ans * 2")] + [AssistantMessage("<answer>10</answer>")]
    runner, tree, episode, state = play(d, env, task.id, messages, family)
    assert len(episode.turns) == 3
    node = tree.root.children[0].children[0]  # after two calculator turns
    parent_prefix = prefix_ids(node)
    state["prompts"].clear()
    branches = asyncio.run(runner.rollouts(tree, node, 2))
    assert all(b.status == "terminated" and b.continuation for b in branches)
    assert state["prompts"] == [parent_prefix, parent_prefix]
    for b in branches:
        assert token_path(b.leaf).ids[: len(parent_prefix)] == parent_prefix
        assert b.leaf.parent is node


@pytest.mark.parametrize("family, template", [("hermes", "qwen3_training"),
                                              ("qwen3_xml", "qwen3_5_think_training")])
def test_trl_training_templates_make_the_record_exact(family, template):
    """With trl's prefix-preserving Qwen templates even the think blocks are the template's."""
    d = make_dialect(family_tokenizer(family, template))
    env, task, messages = bfcl_episode(family)
    _, tree, episode, _ = play(d, env, task.id, messages, family)
    assert episode.reward == 1.0
    for node in (n for n in tree.nodes() if n.parent is not None and not n.is_leaf):
        want = d.render(prefix_messages(node), tools=env.tool_schemas(), generation_prompt=True)
        assert d.decode(prefix_ids(node)) == want


@pytest.mark.parametrize("template, family", [(t, f) for t, f in EXTRA_TEMPLATES.items() if f in FAMILIES])
def test_other_templates_of_each_family_run_the_calculator_episode(template, family):
    d = make_dialect(family_tokenizer(family, template), chat_template_kwargs=TEMPLATE_KWARGS.get(template))
    assert d.name == family
    env = CalculatorEnv(suite_options={"size": 20, "seed": 0})
    task = env.tasks[0]
    _, tree, episode, _ = play(d, env, task.id, env.demonstration(task), family)
    assert (episode.status, episode.reward) == ("terminated", 1.0)
    assert_record_is_the_templates_rendering(d, tree, env, family)


@pytest.mark.parametrize("family", FAMILIES)
def test_warm_start_demonstrations_are_written_in_the_dialect(dialects, family):
    from trace_agents.train.warmup import demonstration_tokens

    d = dialects[family]
    env = CalculatorEnv(suite_options={"size": 20, "seed": 1})
    task = env.tasks[3]
    ids, mask = demonstration_tokens(env, task.id, d)
    trained = [i for i, m in zip(ids, mask) if m]
    actions = [d.encode(d.render_action(m)) for m in env.demonstration(task)]
    assert trained[: len(actions[0])] == actions[0] and trained[len(actions[0])] in d.end_ids
    assert d.decode(trained).count(str(task.answer)) == 1  # the answer, never the tool's result


@pytest.mark.parametrize("template", [t for t in TEMPLATE_KWARGS if t.startswith("nemotron")])
def test_nemotron_3_thinks_and_calls_in_the_qwen3_xml_format(template, search_env):
    """With thinking on (its default) Nemotron 3's replies open inside ``<think>``."""
    d = make_dialect(family_tokenizer("qwen3_xml", template))
    calls = (ToolCall("search", {"query": "75001", "topk": 2}), ToolCall("search", {"query": "Zoë"}))
    reply = d.render_action(AssistantMessage("", calls, "erst denken"))
    assert d.generation_prompt.endswith("<think>\n") and not reply.startswith("<think>")
    assert d.parse(reply, search_env) == AssistantMessage("", calls, "erst denken")
