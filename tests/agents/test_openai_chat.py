"""Evaluating through an OpenAI-compatible chat endpoint's native tool calling (``--backend openai``):
the stand-in server speaks the API (recorded replies, or the tiny model with a Hermes parser), the
requests and replies are checked against the ``openai`` package's own types, and hostile replies
end an episode with an error observation or as failed, within the deadline, never a crash."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tests import fuzz
from tests.hostile_http import SLACK
from trace_agents.backends import OpenAIChatBackend, RetryPolicy
from trace_agents.backends.base import SamplingParams
from trace_agents.cli import main
from trace_agents.dialects import NativeToolsDialect
from trace_agents.evaluate import Benchmark, evaluate, resolve
from trace_agents.rollout import RolloutRunner
from trace_agents.testing.standin_server import StandinServer, tool_message
from trace_envs.calculator.env import CalculatorEnv

pytest.importorskip("openai", reason="the dev extra installs openai")
from openai.types.chat.completion_create_params import CompletionCreateParamsNonStreaming
from pydantic import TypeAdapter

REQUEST = TypeAdapter(CompletionCreateParamsNonStreaming)
CALL = {"id": "call_a", "type": "function",
        "function": {"name": "calculator", "arguments": json.dumps({"expression": "12*(3+4)"})}}
SOLVE = [{"content": None, "tool_calls": [CALL], "reasoning_content": "multiply first"},
         {"content": "<answer>84</answer>"}]
GREEDY = SamplingParams(temperature=0.0, max_tokens=32)


def _tasks(tmp_path, n: int = 1) -> str:
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps({"question": f"What is 12*(3+4)? ({i})", "answer": "84"}) + "\n"
                            for i in range(n)))
    return str(path)


def _checked_request(body: dict) -> dict:
    """A request as the openai package types it (pydantic raises on a wrong shape)."""
    REQUEST.validate_python(body)
    assert not {"include_stop_str_in_output", "return_token_ids", "skip_special_tokens"} & set(body)
    return body


def _evaluate(url: str, bench: Benchmark, **options) -> tuple[dict, list]:
    """``evaluate`` through an ``OpenAIChatBackend`` at ``url``: the report and the episodes."""
    episodes: list = []

    async def go():
        backend = OpenAIChatBackend(url, "standin")
        try:
            return await evaluate(bench, backend, None, on_episode=episodes.append, **{"sampling": GREEDY, **options})
        finally:
            await backend.aclose()

    return asyncio.run(go()), episodes


def test_an_episode_goes_through_native_tool_calls_with_ids_and_reasoning(tmp_path):
    with StandinServer(script=SOLVE) as server:
        report, episodes = _evaluate(server.url, resolve(_tasks(tmp_path, 3)))
        requests = list(server.standin.chat_requests)
    assert report["accuracy"] == 1.0 and report["failed"] == 0 and report["turns"] == 2.0
    assert len(requests) == 6 and all(_checked_request(r) for r in requests)
    first = requests[0]  # the three episodes' requests interleave
    second = next(r for r in requests if len(r["messages"]) > 2)
    assert first["tools"] == CalculatorEnv().tool_schemas()
    assert [m["role"] for m in first["messages"]] == ["system", "user"]
    assistant, result = second["messages"][-2:]
    assert assistant["tool_calls"] == [CALL] and assistant["reasoning_content"] == "multiply first"
    assert result == {"role": "tool", "tool_call_id": "call_a", "content": "84"}
    turn = episodes[0].turns[0]
    assert turn.env_action["reasoning_content"] == "multiply first" and "multiply first" in turn.action


def test_the_standin_replies_match_the_openai_types(standin, fresh_faults):
    from openai.types.chat import ChatCompletion

    env = CalculatorEnv()
    env.reset(seed=0)
    body = {"model": "standin", "messages": [{"role": "user", "content": "2+2?"}],
            "tools": env.tool_schemas(), "max_completion_tokens": 8, "temperature": 0.0}
    reply = httpx.post(f"{standin.url}/v1/chat/completions", json=_checked_request(body), timeout=60)
    ChatCompletion.model_validate(reply.json())
    with StandinServer(script=SOLVE) as server:
        for messages in (body["messages"], [*body["messages"], {"role": "assistant", "content": "x"}]):
            reply = httpx.post(f"{server.url}/v1/chat/completions", json={**body, "messages": messages}, timeout=10)
            parsed = ChatCompletion.model_validate(reply.json())
            assert parsed.choices[0].finish_reason in ("tool_calls", "stop")
        assert parsed.choices[0].message.content == "<answer>84</answer>"
        over = httpx.post(f"{server.url}/v1/chat/completions", timeout=10, json={
            **body, "messages": [*messages, {"role": "assistant", "content": "y"}]})
        assert over.status_code == 400 and "the script has 2 replies" in over.text


def test_the_model_backed_standin_parses_hermes_calls_like_vllm():
    message = tool_message('<think>plan</think>Let me.<tool_call>{"name": "calculator", '
                           '"arguments": {"expression": "1+1"}}</tool_call>')
    assert message["reasoning_content"] == "plan" and message["content"] == "Let me."
    call = message["tool_calls"][0]
    assert call["function"] == {"name": "calculator", "arguments": '{"expression": "1+1"}'}
    broken = tool_message('<tool_call>{"name": "calculator", </tool_call>')
    assert broken["tool_calls"] == [] and broken["content"].startswith("<tool_call>")


def test_any_generated_reply_is_a_valid_openai_message_the_env_answers():
    from hypothesis import given
    from openai.types.chat import ChatCompletionMessage

    valid = ['<think>plan</think><tool_call>{"name": "calculator", "arguments": {"expression": "1+1"}}</tool_call>',
             "<answer>2</answer>"]
    markers = ["<tool_call>", "</tool_call>", "<think>", "</think>", "{", '"', "\\"]
    dialect, env = NativeToolsDialect(), CalculatorEnv()

    @fuzz.examples(100)
    @given(fuzz.hostile_replies(valid, markers))
    def check(reply: str) -> None:
        message = tool_message(reply)
        ChatCompletionMessage.model_validate(message)
        env.reset(seed=0)
        with fuzz.measured("stand-in tool parse + step"):
            action = dialect.parse(json.dumps(message))
            observation, *_, info = env.step(action)
        assert isinstance(observation, str)
        dialect.turn_messages(action, observation, info)

    check()


def test_a_random_model_behind_the_api_is_evaluated_without_failures(standin, fresh_faults):
    bench = Benchmark("arithmetic", "trace/Calculator-v0", {"split": "test", "max_turns": 1})
    report, episodes = _evaluate(standin.url, bench, limit=2, sampling=SamplingParams(temperature=0.0, max_tokens=4))
    assert report["failed"] == 0 and report["episodes"] == 2
    assert all("tools" in r for r in list(standin.standin.chat_requests)[-2:])
    assert all(e.turns[0].env_action["role"] == "assistant" for e in episodes)


@pytest.mark.parametrize("bench", ["multihop", "bfcl_base"])
def test_search_and_bfcl_suites_evaluate_through_native_tools(bench):
    if bench.startswith("bfcl"):
        pytest.importorskip("bfcl_eval", reason="bfcl-eval is not installed")
    script = [{"content": "I cannot tell."}] * 30  # no tool call: the final answer, or the end of a user turn
    if bench == "multihop":
        search = {"id": "s1", "type": "function", "function": {"name": "search", "arguments": '{"query": "x"}'}}
        script = [{"content": None, "tool_calls": [search]}, *script]
    with StandinServer(script=script) as server:
        report, _ = _evaluate(server.url, resolve(bench), limit=1)
        requests = list(server.standin.chat_requests)
    assert report["failed"] == 0 and report["episodes"] == 1
    assert requests[0]["tools"] and all(_checked_request(r) for r in requests)
    if bench == "multihop":
        assert requests[1]["messages"][-1]["tool_call_id"] == "s1"


def test_eval_cli_reads_the_key_from_the_environment_and_never_prints_it(tmp_path, monkeypatch, capsys):
    from trace_agents.backends import make_backend

    monkeypatch.setenv("MY_KEY", "sk-secret-1234")
    with StandinServer(script=SOLVE) as server:
        code = main(["eval", "--backend", "openai", "--url", server.url, "--model", "standin",
                     "--api-key-env", "MY_KEY", "--bench", _tasks(tmp_path, 2), "--json", "--no-progress"])
    out = capsys.readouterr()
    assert code == 0 and "sk-secret-1234" not in out.out + out.err
    report = json.loads(out.out.strip().splitlines()[-1])["benchmarks"][0]
    assert report["accuracy"] == 1.0 and report["model"] == "standin"
    backend = make_backend("openai", url="http://127.0.0.1:1", model_name="m", api_key="sk-secret-1234")
    assert backend.http._client.headers["authorization"] == "Bearer sk-secret-1234"


@pytest.mark.parametrize(("argv", "message"), [
    (["--bench", "arithmetic"], "needs --model NAME"),
    (["--model", "m", "--dialect", "hermes", "--bench", "arithmetic"], "drop --arm and --dialect"),
    (["--model", "m", "--api-key-env", "TRACE_NO_SUCH_VAR", "--bench", "arithmetic"], "is not set"),
])
def test_eval_cli_refuses_bad_openai_options(argv, message, capsys):
    code = main(["eval", "--backend", "openai", "--url", "http://127.0.0.1:1", *argv])
    assert code != 0 and message in capsys.readouterr().err


# ------------------------------------------------------------- hostile servers
HOSTILE_TIMEOUT = 0.2
REPLY = {"id": "c", "object": "chat.completion", "created": 0, "model": "m",
         "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
             "role": "assistant", "content": None, "reasoning_content": "think",
             "tool_calls": [{"id": "call_1", "type": "function",
                             "function": {"name": "calculator", "arguments": '{"expression": "1+2"}'}}]}}],
         "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


def _play(url: str, **options):
    """One calculator episode of at most two turns against ``url``."""
    options = {"retry": RetryPolicy(attempts=2, backoff_s=0.01), "timeout_s": HOSTILE_TIMEOUT,
               "total_timeout_s": 2 * HOSTILE_TIMEOUT, "max_reply_bytes": 256 * 1024, **options}
    backend = OpenAIChatBackend(url, "m", **options)
    runner = RolloutRunner(backend, sampling=GREEDY, step_timeout_s=5.0)
    assert isinstance(runner.dialect, NativeToolsDialect)

    async def go():
        try:
            env = CalculatorEnv(max_turns=2)
            tree = runner.new_tree(env, env.tasks[0].id)
            return (await runner.rollouts(tree, tree.root, 1))[0]
        finally:
            await backend.aclose()
            runner.env_pool.shutdown()

    return asyncio.run(go())


def test_any_chat_reply_ends_the_episode_cleanly_within_the_deadline(hostile):
    from hypothesis import given, target

    from tests.hostile_http import plans, timed

    @fuzz.examples(60)
    @given(plan=plans(REPLY, drip_s=0.02))
    def run(plan):
        hostile.plan = plan
        with timed() as took:
            episode = _play(hostile.url)
        target(took[0], label="seconds")
        assert took[0] < 2 * (2 * HOSTILE_TIMEOUT) + SLACK, plan
        assert episode.status in ("terminated", "truncated", "failed")
        assert (episode.status == "failed") == (episode.error is not None)

    run()


def _bad_arguments(call):
    call["function"]["arguments"] = "{not json"


def _no_id(call):
    del call["id"]


def _no_function(call):
    del call["function"]


def _no_name(call):
    del call["function"]["name"]


@pytest.mark.parametrize(("breaks", "error"), [
    (_bad_arguments, None), (_no_id, None), (_no_function, "unexpected reply"), (_no_name, "unexpected reply"),
])
def test_broken_tool_calls_are_error_observations_or_a_failed_episode(hostile, breaks, error):
    from tests.hostile_http import Plan

    reply = json.loads(json.dumps(REPLY))
    breaks(reply["choices"][0]["message"]["tool_calls"][0])
    hostile.plan = Plan(body=json.dumps(reply).encode())
    episode = _play(hostile.url)
    if error is not None:
        assert episode.status == "failed" and error in episode.error
        return
    assert episode.status == "truncated" and len(episode.turns) == 2  # the same reply twice
    first = episode.turns[0]
    call_id = first.env_action["tool_calls"][0]["id"]
    assert call_id == ("call_0" if breaks is _no_id else "call_1")
    if breaks is _bad_arguments:
        assert first.info["error"] and first.observation.startswith("Error")
    else:
        assert first.observation == "3"


def test_huge_and_slow_chat_replies_fail_the_episode_in_time(hostile):
    from tests.hostile_http import Plan, timed

    hostile.plan = Plan(body=b'{"choices": [{"message": {"content": "', endless=True)
    with timed() as took:
        episode = _play(hostile.url, timeout_s=5.0, total_timeout_s=5.0, max_reply_bytes=1 << 20)
    assert episode.status == "failed" and "exceeds the limit" in episode.error and took[0] < 3.0
    hostile.plan = Plan(body=json.dumps(REPLY).encode(), drip_s=0.01)
    with timed() as took:
        episode = _play(hostile.url)
    assert episode.status == "failed" and took[0] < 2 * HOSTILE_TIMEOUT + SLACK


@pytest.mark.parametrize(("backend", "key_env", "sent"), [
    ("openai", None, "sk-openai"), ("vllm", None, None), ("vllm", "MY_KEY", "sk-mine"), ("openai", "MY_KEY", "sk-mine"),
])
def test_openai_api_key_goes_only_to_the_openai_backend_unless_named(monkeypatch, backend, key_env, sent):
    import argparse

    from trace_agents.cli.eval import _api_key

    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    monkeypatch.setenv("MY_KEY", "sk-mine")
    assert _api_key(argparse.Namespace(backend=backend, api_key_env=key_env)) == sent
