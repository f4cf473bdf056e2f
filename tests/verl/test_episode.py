"""EpisodeRunner at verl's boundary: a scripted async ``generate`` and a small ChatML tokenizer."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz import examples
from tests.verl.conftest import ChatMLTokenizer, ScriptedServer, answer, calc, script, spec
from trace_agents.dialects import TextDialect
from trace_agents.react import initial_messages, system_prompt
from trace_agents.verl import Branch, EnvSpec, Episode, EpisodeRunner, stop_params
from verl.experimental.agent_loop.agent_loop import AgentLoopOutput


def make_runner(policy, *, response_length: int = 4096, logprobs: bool = False,
                **kw) -> tuple[EpisodeRunner, ScriptedServer]:
    tok = ChatMLTokenizer()
    server = ScriptedServer(tok, policy, logprobs)
    return EpisodeRunner(server.generate, TextDialect(tok), response_length=response_length, **kw), server


def play(runner: EpisodeRunner, env: EnvSpec, params: dict | None = None) -> Episode:
    return asyncio.run(runner.run(env, params or {"temperature": 1.0}, prompt_key="p0"))


def segments(ep: Episode, tok=ChatMLTokenizer()) -> list[tuple[int, str]]:
    """(mask, text) runs of the response."""
    runs: list[tuple[int, list[int]]] = []
    for i, m in zip(ep.response_ids, ep.response_mask):
        if runs and runs[-1][0] == m:
            runs[-1][1].append(i)
        else:
            runs.append((m, [i]))
    return [(m, tok.decode(ids)) for m, ids in runs]


def test_mask_reward_and_turns_of_a_solved_episode():
    runner, server = make_runner(script(calc("2+3"), f"<answer>{answer()}</answer>"))
    ep = play(runner, spec())
    assert ep.reward == 1.0 and ep.terminated and not ep.truncated and ep.stop_reason == "answer"
    runs = segments(ep)
    assert [m for m, _ in runs] == [1, 0, 1]
    assert runs[0][1] == calc("2+3") + "<|im_end|>"
    assert runs[1][1] == "\n<|im_start|>user\n<tool_response>\n5\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    assert runs[2][1] == f"<answer>{answer()}</answer><|im_end|>"
    assert ep.num_turns == 4  # prompt, action, observation, answer
    first, last = ep.turns
    assert (first.observation == "5" and first.snapshot
            and first.offset == ep.response_mask.index(1, ep.response_mask.index(0)))
    assert last.observation is None and last.snapshot is None
    # the prompt: the env's instructions, its tools in the system text, the task
    prompt = ChatMLTokenizer().decode(ep.prompt_ids)
    assert '"name": "calculator"' in prompt and ep.task_prompt in prompt and prompt.endswith("assistant\n")
    # every turn is sent on one sticky session with the exact running prefix
    assert [c["request_id"] for c in server.calls] == [ep.session] * 2
    assert server.calls[1]["prompt_ids"] == ep.prompt_ids + ep.response_ids[: first.offset]
    fields = ep.verl_fields()
    assert fields["reward_score"] == 1.0 and fields["num_turns"] == 4 and fields["response_logprobs"] is None


def test_malformed_actions_become_error_observations_and_the_loop_goes_on():
    runner, _ = make_runner(script("let me think", '<tool_call>{"name": "calculator", "arguments": {</tool_call>',
                                   calc("1/0"), f"<answer>{answer()}</answer>"))
    ep = play(runner, spec())
    observations = [t.observation for t in ep.turns[:-1]]
    assert all(o.startswith("Error: ") for o in observations), observations
    assert "no <tool_call> or <answer>" in observations[0] and "not valid JSON" in observations[1]
    assert ep.reward == 1.0 and len(ep.turns) == 4
    assert [m for m, _ in segments(ep)] == [1, 0, 1, 0, 1, 0, 1]


def test_a_wrong_answer_scores_zero():
    ep = play(make_runner(script("<answer>-1</answer>"))[0], spec())
    assert ep.reward == 0.0 and ep.terminated and ep.response_mask == [1] * len(ep.response_ids)


def test_the_env_turn_limit_ends_a_rollout_with_reward_zero():
    ep = play(make_runner(script(calc("1+1")))[0], spec(max_turns=3))
    assert ep.truncated and not ep.terminated and ep.stop_reason == "max_turns" and ep.reward == 0.0
    assert len(ep.turns) == 3 and ep.num_turns == 1 + 3 + 2


def test_verls_response_length_caps_the_trajectory():
    runner, server = make_runner(script(calc("1+1")), response_length=150)
    ep = play(runner, spec())
    assert ep.stop_reason == "response_length" and ep.truncated and ep.reward == 0.0
    assert len(ep.response_ids) <= 150 and len(ep.response_mask) == len(ep.response_ids)
    assert all(c["sampling_params"]["max_tokens"] == 150 - len(c["prompt_ids"]) + len(ep.prompt_ids)
               for c in server.calls)


def test_sampling_params_carry_the_engines_stop_params_and_are_not_mutated():
    params = {"temperature": 0.7, "logprobs": True}
    react = TextDialect(ChatMLTokenizer())
    runner, server = make_runner(script(f"<answer>{answer()}</answer>"), stop=stop_params("vllm", react))
    play(runner, spec(), params)
    sent = server.calls[0]["sampling_params"]
    assert sent["stop"] == ["</tool_call>", "</answer>"] and sent["include_stop_str_in_output"]
    assert sent["stop_token_ids"] == [ChatMLTokenizer.eos_token_id]
    assert sent["temperature"] == 0.7 and params == {"temperature": 0.7, "logprobs": True}
    assert stop_params("sglang", react)["no_stop_trim"] and stop_params("trtllm", react) == {}


def test_log_probs_stay_aligned_with_the_response():
    runner, _ = make_runner(script(calc("3*3"), f"<answer>{answer()}</answer>"), logprobs=True)
    ep = play(runner, spec())
    assert len(ep.response_logprobs) == len(ep.response_ids)
    assert all((lp == -0.5) == (m == 1) for lp, m in zip(ep.response_logprobs, ep.response_mask))


@pytest.mark.parametrize("train_prefix", [False, True])
def test_a_continuation_resumes_the_exact_env_state_and_token_prefix(train_prefix):
    runner, server = make_runner(script(calc("6*7"), calc("ans+1"), "<answer>0</answer>"),
                                 train_prefix=train_prefix)
    root = play(runner, spec())
    assert [t.observation for t in root.turns[:2]] == ["42", "43"] and root.reward == 0.0
    branch = root.branch(1)
    assert isinstance(branch, Branch) and branch.turn == 1 and branch.snapshot == root.turns[0].snapshot

    server.policy = script(calc("ans*2"), f"<answer>{answer()}</answer>")
    server.calls.clear()
    cont = asyncio.run(runner.resume(branch, {"temperature": 1.0}))
    first = server.calls[0]
    assert first["request_id"] == root.session  # same server: its prefix cache holds the parent
    assert first["prompt_ids"] == root.prompt_ids + root.response_ids[: root.turns[0].offset]
    assert cont.turns[1].observation == "84"  # ans == 42: the env is back at turn 1, not turn 2
    assert cont.parent == (root.id, 1) and cont.id != root.id and cont.prompt_key == root.prompt_key
    assert cont.reward == 1.0 and len(cont.turns) == 3
    offset = root.turns[0].offset
    assert cont.response_ids[:offset] == root.response_ids[:offset]
    expected_prefix_mask = root.response_mask[:offset] if train_prefix else [0] * offset
    assert cont.response_mask[:offset] == expected_prefix_mask
    assert 1 in cont.response_mask[offset:]
    with pytest.raises(ValueError, match="no branch point"):
        root.branch(3)  # the answer turn ended the episode


def test_env_spec_from_extra_info():
    s = EnvSpec.from_extra_info({"env_id": "trace/Calculator-v0", "env_kwargs": json.dumps({"max_turns": 2}),
                                 "task_id": 7, "seed": "3"})
    assert s == EnvSpec("trace/Calculator-v0", {"max_turns": 2}, "7", 3)
    assert EnvSpec.from_extra_info({"env_id": "trace/Calculator-v0", "env_kwargs": None}).env_kwargs == {}
    with pytest.raises(ValueError, match="env_id"):
        EnvSpec.from_extra_info({"index": 0})
    with pytest.raises(ValueError, match="JSON object"):
        EnvSpec.from_extra_info({"env_id": "x", "env_kwargs": "[1]"})
    with pytest.raises(TypeError, match="not a trace_envs.ToolEnv"):
        EnvSpec("CartPole-v1").make()


def test_a_prompt_longer_than_verls_prompt_length_is_a_clear_error():
    runner, _ = make_runner(script("<answer>1</answer>"), prompt_length=10)
    with pytest.raises(ValueError, match="prompt_length"):
        play(runner, spec())


def test_the_prompt_is_the_rollout_paths_system_prompt_and_task():
    """One prompt builder: verl's prompt is `react.initial_messages` rendered by the template."""
    runner, _ = make_runner(script("<answer>1</answer>"))
    ep = play(runner, spec())
    env = spec().make()
    task_prompt, _ = env.reset(options={"task_id": spec().task_id})
    assert ep.task_prompt == task_prompt
    assert ep.prompt_ids == runner.dialect.prompt_ids(initial_messages(env, task_prompt))
    assert system_prompt(env) in ChatMLTokenizer().decode(ep.prompt_ids)


ACTIONS = st.sampled_from([calc("1+2"), calc("ans*3"), calc("nope("), "hmm", "", "<answer>9</answer>",
                           '<tool_call>{"name": "x"}</tool_call>', "<answer>1</answer><tool_call>{}</tool_call>"])


@settings(max_examples=40, deadline=None)
@given(actions=st.lists(ACTIONS, min_size=1, max_size=6), max_turns=st.integers(1, 5),
       response_length=st.integers(40, 800))
def test_any_script_gives_a_consistent_trajectory(actions, max_turns, response_length):
    runner, _ = make_runner(script(*actions), response_length=response_length)
    ep = play(runner, spec(max_turns=max_turns))
    assert len(ep.response_ids) == len(ep.response_mask) <= response_length
    assert ep.response_mask[:1] == [1] and set(ep.response_mask) <= {0, 1}
    assert 1 <= len(ep.turns) <= max_turns and ep.reward in (0.0, 1.0)
    offsets = [t.offset for t in ep.turns]
    assert offsets == sorted(offsets) and offsets[-1] == len(ep.response_ids)
    assert all(t.snapshot is not None for t in ep.turns[:-1]) and ep.turns[-1].snapshot is None
    assert ep.stop_reason in ("answer", "max_turns", "response_length")
    for turn in range(1, len(ep.turns)):  # every branch point re-creates the same prefix
        b = ep.branch(turn)
        assert b.response_ids == ep.response_ids[: ep.turns[turn - 1].offset]
    # the episode survives verl V1's serialisation (pydantic model_dump inside as_dict)
    stored = AgentLoopOutput(**ep.verl_fields(), extra_fields={"trace_episode": ep}).as_dict()
    assert Episode.from_dict(stored["extra_fields"]["trace_episode"]) == ep


def test_max_tokens_per_turn_caps_each_generation_and_the_trajectory_cap_still_holds():
    runner, server = make_runner(script(calc("1+1")), response_length=400, max_tokens_per_turn=30)
    ep = play(runner, spec())
    sent = [c["sampling_params"]["max_tokens"] for c in server.calls]
    assert sent[0] == 30 and max(sent) == 30 and len(ep.response_ids) <= 400
    actions = [len(text) for mask, text in segments(ep) if mask == 1]  # ChatMLTokenizer: a token a char
    assert actions and max(actions) <= 30
    with pytest.raises(ValueError, match="max_tokens_per_turn"):
        make_runner(script("x"), max_tokens_per_turn=0)


@pytest.fixture(scope="module")
def xml_dialect():
    """Qwen3.5's chat template from the trl wheel on the offline tokenizer."""
    from tests.agents.family_tokenizers import family_tokenizer
    from trace_agents.dialects import make_dialect

    return make_dialect(family_tokenizer("qwen3_xml"))


def xml_actions(dialect) -> list[str]:
    from trace_envs.actions import ToolCall
    from trace_envs.structured import AssistantMessage

    def call(*exprs: str) -> str:
        calls = tuple(ToolCall("calculator", {"expression": e}) for e in exprs)
        return dialect.render_action(AssistantMessage(tool_calls=calls))

    broken = "<tool_call>\n<function=calculator>\n<parameter=expression>\n2+3\n</function>\n</tool_call>"
    return [call("1+2"), call("ans*3", "ans+1"), call("nope("), broken, call("4") + "\n" + broken, "hmm", "",
            "<tool_call>\n<function=calculator>", dialect.render_action(AssistantMessage("<answer>9</answer>"))]


@settings(max_examples=25, deadline=None)
@given(data=st.data(), max_turns=st.integers(1, 4), response_length=st.integers(60, 1500))
def test_any_script_in_a_family_dialect_gives_a_consistent_trajectory(xml_dialect, data, max_turns, response_length):
    """Qwen3.5 XML replies, well-formed or not: every turn's tokens are the model's then the
    template's, every branch point ends at the next generation prompt, malformed calls are answered."""
    tok = xml_dialect.tokenizer
    actions = data.draw(st.lists(st.sampled_from(xml_actions(xml_dialect)), min_size=1, max_size=5))
    server = ScriptedServer(tok, script(*actions), end_of_turn=[tok.eos_token_id])
    runner = EpisodeRunner(server.generate, xml_dialect, response_length=response_length)
    ep = play(runner, spec(max_turns=max_turns))
    assert len(ep.response_ids) == len(ep.response_mask) <= response_length
    assert 1 <= len(ep.turns) <= max_turns and ep.reward in (0.0, 1.0)
    for turn in ep.turns[:-1]:
        prefix = tok.decode(ep.prompt_ids + ep.response_ids[: turn.offset], skip_special_tokens=False)
        assert prefix.endswith(xml_dialect.generation_prompt)
        assert all(result in prefix for result in turn.observation.split("\n\n"))  # one message per call
        if turn.action.count("<parameter=") != turn.action.count("</parameter>"):
            assert "Error: malformed tool call" in turn.observation
    for call, turn in zip(server.calls[1:], ep.turns):  # each turn resent the exact running prefix
        assert call["prompt_ids"] == ep.prompt_ids + ep.response_ids[: turn.offset]


# ------------------------------------------------------------------------------------ failures
FAULTS = {"GONE": "ConnectionError", "BOOM": "RecursionError", "CRASH": "RuntimeError"}
"""A reply holding the key fails generation, parsing or the env step with that exception."""


class Brittle(TextDialect):
    """The react dialect with a parser that gives up on one reply (as a template parser may on
    deeply nested JSON)."""

    def parse(self, text, env=None):
        if "BOOM" in text:
            raise RecursionError("maximum recursion depth exceeded")
        return super().parse(text, env)


class FlakyServer(ScriptedServer):
    async def generate(self, request_id, *, prompt_ids, sampling_params):
        out = await super().generate(request_id, prompt_ids=prompt_ids, sampling_params=sampling_params)
        if "GONE" in self.tokenizer.decode(out.token_ids):
            raise ConnectionError("server gone")
        return out


@pytest.fixture
def crashing_step(monkeypatch):
    from trace_envs.calculator.env import CalculatorEnv

    step = CalculatorEnv.step

    def crashing(self, action):
        if "CRASH" in str(action):
            raise RuntimeError("tool backend died")
        return step(self, action)

    monkeypatch.setattr(CalculatorEnv, "step", crashing)


@examples(24)
@given(fault=st.sampled_from(sorted(FAULTS)), before=st.integers(0, 3), resume=st.booleans())
def test_an_exception_in_generation_parsing_or_the_env_step_fails_only_that_episode(crashing_step, fault, before,
                                                                                     resume):
    """The episode ends failed with the error kept and its completed turns recorded (branchable,
    serialisable); a healthy episode played alongside is untouched."""
    tok = ChatMLTokenizer()
    fault_at: dict[str, int | None] = {"turn": None}  # None: the parent, which answers after two calls

    def policy(prompt: str, _n: int) -> str:
        done = prompt.count("<tool_response>\n")
        if fault_at["turn"] is None:
            return calc("1+1") if done < 2 else "<answer>0</answer>"
        return fault if done >= fault_at["turn"] else calc("1+1")

    faulty = EpisodeRunner(FlakyServer(tok, policy).generate, Brittle(tok), response_length=4096)
    healthy = make_runner(script(calc("2+3"), f"<answer>{answer()}</answer>"))[0]
    inherited = 0
    if resume:
        parent = play(faulty, spec())
        inherited, fault_at["turn"] = 1, 1 + before
        broken = faulty.resume(parent.branch(1), {})
    else:
        fault_at["turn"] = before
        broken = faulty.run(spec(), {}, prompt_key="p0")

    async def both():
        return await asyncio.gather(broken, healthy.run(spec(), {}, prompt_key="p1"))

    ep, ok = asyncio.run(both())
    assert ok.reward == 1.0 and not ok.failed and ok.error is None
    assert ep.failed and ep.stop_reason == "error" and ep.reward == 0.0 and not ep.terminated
    assert ep.error.startswith(FAULTS[fault])
    assert len(ep.turns) == inherited + before and all(t.observation == "2" and t.snapshot for t in ep.turns)
    if ep.turns:
        assert len(ep.response_ids) == len(ep.response_mask) == ep.turns[-1].offset
    else:  # one masked token: verl scores a row's last response token
        assert ep.response_mask == [0] and len(ep.response_ids) == 1
    stored = AgentLoopOutput(**ep.verl_fields(), extra_fields={"trace_episode": ep}).as_dict()
    assert Episode.from_dict(stored["extra_fields"]["trace_episode"]) == ep


def test_a_hung_server_fails_its_episode_at_the_episode_deadline():
    """A generation that never returns fails its episode (error kept, earlier turns recorded) at
    ``episode_timeout_s`` instead of stalling verl's step forever."""
    runner, server = make_runner(script(calc("1+1")), episode_timeout_s=0.5)
    answered = server.generate

    async def hangs_on_the_second_call(request_id, **kw):
        if len(server.calls) >= 1:
            await asyncio.sleep(3600)
        return await answered(request_id, **kw)

    runner.generate = hangs_on_the_second_call
    ep = play(runner, spec())
    assert ep.failed and ep.stop_reason == "error" and "0.5 s deadline" in ep.error
    assert len(ep.turns) == 1 and ep.turns[0].observation == "2"


@pytest.mark.parametrize("broken", ["make", "reset", "restore"])
def test_an_env_that_cannot_be_set_up_fails_its_episode_and_every_env_is_closed(broken, monkeypatch):
    """An env that cannot be built, reset or restored fails only its episode (charged with its
    error, one masked token, serialisable), and every env an episode opened is closed."""
    from trace_envs.calculator.env import CalculatorEnv

    closed: list[int] = []
    monkeypatch.setattr(CalculatorEnv, "close", lambda self: closed.append(id(self)))
    runner = make_runner(script(calc("1+1"), f"<answer>{answer()}</answer>"))[0]
    parent = play(runner, spec())
    assert not parent.failed and len(closed) == 1

    def fail(*args, **kwargs):
        raise RuntimeError(f"{broken} failed")

    if broken == "make":
        monkeypatch.setattr(EnvSpec, "make", fail)
    else:
        monkeypatch.setattr(CalculatorEnv, broken, fail)
    ep = (asyncio.run(runner.resume(parent.branch(1), {})) if broken == "restore" else play(runner, spec()))
    assert ep.failed and ep.error == f"RuntimeError: {broken} failed" and ep.prompt_ids
    assert ep.response_mask[-1] == 0 and len(ep.response_ids) == len(ep.response_mask)
    stored = AgentLoopOutput(**ep.verl_fields(), extra_fields={"trace_episode": ep}).as_dict()
    assert Episode.from_dict(stored["extra_fields"]["trace_episode"]).error == ep.error
    assert len(closed) == (1 if broken == "make" else 2)
