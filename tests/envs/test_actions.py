from hypothesis import given, strategies as st

from trace_envs.actions import parse_action


def call(name: str, args: str = "{}") -> str:
    return f'<tool_call>{{"name": "{name}", "arguments": {args}}}</tool_call>'


def test_single_call_with_thought():
    a = parse_action("I will add. " + call("calculator", '{"expression": "1+2"}'))
    assert a.error is None and a.answer is None
    assert [(c.name, c.arguments, c.error) for c in a.tool_calls] == [
        ("calculator", {"expression": "1+2"}, None)
    ]
    assert a.thought == "I will add."


def test_several_calls_keep_order():
    a = parse_action(call("a") + " and " + call("b"))
    assert [c.name for c in a.tool_calls] == ["a", "b"]


def test_answer_and_think_block():
    a = parse_action("<think>hmm <answer>1</answer></think>so <answer> 42 </answer>")
    assert a.answer == "42" and a.error is None
    assert "hmm" in a.thought


def test_unterminated_call_is_accepted():
    a = parse_action('<tool_call>{"name": "f", "arguments": {"x": 1}}')
    assert a.tool_calls[0].name == "f" and a.tool_calls[0].arguments == {"x": 1}


def test_arguments_as_json_string():
    a = parse_action('<tool_call>{"name": "f", "arguments": "{\\"x\\": 2}"}</tool_call>')
    assert a.tool_calls[0].arguments == {"x": 2}


def test_malformed_calls_carry_errors():
    cases = {
        "<tool_call>{oops</tool_call>": "not valid JSON",
        "<tool_call>[1, 2]</tool_call>": "JSON object",
        '<tool_call>{"arguments": {}}</tool_call>': "no string 'name'",
        '<tool_call>{"name": "f", "arguments": [1]}</tool_call>': "must be a JSON object",
        "<tool_call>   </tool_call>": "empty",
    }
    for text, expected in cases.items():
        (c,) = parse_action(text).tool_calls
        assert c.error is not None and expected in c.error, (text, c.error)


def test_whole_action_errors():
    assert "empty action" in parse_action("").error
    assert "no <tool_call> or <answer>" in parse_action("just text").error
    assert "not both" in parse_action(call("f") + "<answer>1</answer>").error
    assert "limit" in parse_action("x" * 50, max_chars=10).error
    assert "must be a string" in parse_action(None).error  # type: ignore[arg-type]


@given(st.text(max_size=300))
def test_parser_never_raises(text):
    a = parse_action(text)
    assert a.error is not None or a.answer is not None or a.tool_calls
