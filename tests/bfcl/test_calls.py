"""The safe call-string parser: literals only, never evaluation."""

import keyword

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trace_envs.bfcl.calls import CallSyntaxError, parse_call, render_call

HOSTILE = [
    "__import__('os').system('touch /tmp/pwned')",
    "os.system('ls')",
    "cd(folder=__import__('os').getcwd())",
    "cd(folder=open('/etc/passwd').read())",
    "ls.__class__.__base__()",
    "__builtins__()",
    "_private(a=1)",
    "cd(**{'folder': 'x'})",
    "cd(folder='a'); import os",
    "lambda: 0",
    "cd(folder=f'{1+1}')",
    "cd(folder=[x for x in range(3)])",
    "cd(",
    "",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_call_strings_are_refused(text):
    with pytest.raises(CallSyntaxError):
        parse_call(text)


def test_keyword_and_positional_literals():
    assert parse_call("cd(folder='document')") == ("cd", {"folder": "document"})
    params = {"mean": ["numbers"], "post": ["content", "tags"]}.__getitem__
    assert parse_call("mean([1, 2.5])", params) == ("mean", {"numbers": [1, 2.5]})
    assert parse_call("post('hi', tags=['#a'])", params) == ("post", {"content": "hi", "tags": ["#a"]})
    with pytest.raises(CallSyntaxError):
        parse_call("mean([1], [2])", params)
    with pytest.raises(CallSyntaxError):
        parse_call("post('hi', content='again')", params)
    with pytest.raises(CallSyntaxError):
        parse_call("mean([1])")  # positional without a signature
    with pytest.raises(CallSyntaxError):
        render_call("f", {"or": 1})  # not re-executable by BFCL's checker


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(
    st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True).filter(lambda k: not keyword.iskeyword(k)),
    json_values, max_size=4,
))
def test_render_then_parse_round_trips(arguments):
    assert parse_call(render_call("some_function", arguments)) == ("some_function", arguments)
