"""Hostile inputs for every env: hypothesis strategies, example counts, and measurements.

The property tests in ``tests/*/test_hostile.py`` use :func:`examples` for their example
counts (a few hundred by default; ``pytest --fuzz-long`` multiplies them by ``--fuzz-factor``,
100 unless given) and :func:`measured` around every hostile call, so a run ends with a summary
of how many inputs were tried and the worst time one of them took. Memory: with --fuzz-long,
restoring snapshots is traced (tracemalloc peak per input), and the process's max RSS bounds
every input's memory.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import resource
import time
import tracemalloc
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

_factor = 1
_stats: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])  # count, worst s, worst B


def configure(*, factor: int) -> None:
    global _factor
    _factor = factor


def examples(default: int) -> settings:
    """Hypothesis settings: ``default`` examples (times the --fuzz-long factor), seeded."""
    return settings(
        max_examples=default * _factor, deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                               HealthCheck.data_too_large],
        database=None, derandomize=_factor == 1,
    )


@contextlib.contextmanager
def measured(kind: str, *, max_seconds: float = 30.0, max_bytes: int = 512 * 2**20) -> Iterator[None]:
    """Time one hostile call (and, with --fuzz-long, trace the peak Python memory of a
    snapshot restore); fail past the bounds. They are loose: they catch hangs and blow-ups,
    not slowness (a graded answer may take the grader's 8 s limit plus a worker restart on a
    loaded machine)."""
    trace = _factor > 1 and "snapshot" in kind and not tracemalloc.is_tracing()
    if trace:
        tracemalloc.start()
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1] if trace else 0
        if trace:
            tracemalloc.stop()
        entry = _stats[kind]
        entry[0] += 1
        entry[1], entry[2] = max(entry[1], seconds), max(entry[2], peak)
    assert seconds < max_seconds, f"{kind}: one input took {seconds:.1f} s"
    assert peak < max_bytes, f"{kind}: one input peaked at {peak / 2**20:.0f} MiB"


def save(path: str) -> None:
    """Write :func:`report` to ``path`` (after every test, so a stopped run keeps its figures)."""
    with open(path, "w") as out:
        out.write("\n".join(report()) + "\n")


def report() -> list[str]:
    if not _stats:
        return []
    lines = [f"{'kind':<34}{'inputs':>9}{'worst s':>10}{'worst MiB':>11}"]
    for kind in sorted(_stats):
        count, seconds, peak = _stats[kind]
        memory = f"{peak / 2**20:.1f}" if peak else "-"
        lines.append(f"{kind:<34}{int(count):>9}{seconds:>10.3f}{memory:>11}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines.append(f"process max RSS: {rss:.0f} MiB (tracemalloc peaks of snapshot restores: "
                 "with --fuzz-long only)")
    return lines


# ------------------------------------------------------------------------------ actions
def tool_call(name: Any, arguments: Any) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def _deep(depth: int, open_: str = "[", close: str = "]") -> str:
    return open_ * depth + close * depth


def _mutate(text: str, edits: list[tuple[int, int, str]]) -> str:
    """Apply (position, kind, text) edits: 0 insert, 1 delete a char, 2 replace a char,
    3 duplicate a slice."""
    for position, kind, piece in edits:
        i = position % (len(text) + 1)
        if kind == 0:
            text = text[:i] + piece + text[i:]
        elif kind == 1:
            text = text[:i] + text[i + 1:]
        elif kind == 2:
            text = text[:i] + piece + text[i + 1:]
        else:
            text = text[:i] + text[i: i + 40] * 3 + text[i:]
    return text


edits = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 3), st.text(max_size=3)),
                 min_size=1, max_size=6)


def hostile_actions(valid: list[str], tool_names: list[str]) -> st.SearchStrategy[Any]:
    """Actions a broken or adversarial model (or caller) could send to an env whose well-formed
    actions include ``valid`` and whose tools are ``tool_names``."""
    names = st.sampled_from(tool_names) | st.text(max_size=10)
    deep = st.integers(1, 20_000)
    return st.one_of(
        st.text(max_size=200),                                                  # random unicode
        st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), max_size=5).map(
            lambda s: "<tool_call>" + s + "</tool_call><answer>" + s + "</answer>"),
        st.sampled_from(valid),
        st.tuples(st.sampled_from(valid), edits).map(lambda t: _mutate(*t)),    # mutated calls
        st.tuples(names, st.dictionaries(st.text(max_size=12), json_values, max_size=4)).map(
            lambda t: tool_call(*t)),                                           # wrong arguments
        st.tuples(names, deep).map(                                             # deep JSON
            lambda t: '<tool_call>{"name": %s, "arguments": {"a": %s}}</tool_call>'
            % (json.dumps(t[0]), _deep(t[1]))),
        deep.map(lambda n: "<tool_call>" + _deep(n, "{\"a\":", "}").replace("}", "1}", 1) + "</tool_call>"),
        st.tuples(names, st.integers(60, 40_000)).map(                          # huge integers
            lambda t: '<tool_call>{"name": %s, "arguments": {"a": %s}}</tool_call>'
            % (json.dumps(t[0]), "9" * t[1])),
        st.tuples(names, st.sampled_from(["\\ud800", "\\udfff", "a\\ud83d", "\\ude00b"])).map(
            lambda t: '<tool_call>{"name": %s, "arguments": {"query": "%s", "expression": "%s",'
            ' "content": "%s"}}</tool_call>' % (json.dumps(t[0]), t[1], t[1], t[1])),
        st.integers(30_000, 70_000).map(lambda n: "<answer>" + "9" * n + "</answer>"),
        st.sampled_from(["<answer>9^{9^{9^{9}}}</answer>", "<answer>\\boxed{9^{9^9}}</answer>",
                         "<answer>" + "(" * 5000 + "</answer>", "<answer>10**10**10</answer>",
                         "<tool_call>" * 500, "</tool_call>" * 500, "<think>" * 300]),
        st.none() | st.integers() | st.binary(max_size=20) | st.lists(st.text(max_size=3)),
    )


# ------------------------------------------------------------------------- model replies
def hostile_replies(valid: list[str], markers: list[str]) -> st.SearchStrategy[str]:
    """Replies a broken or adversarial model could write in a family's format: ``valid`` are
    well-formed replies in it, ``markers`` its tags and special tokens. Valid replies cut at any
    point, mutated, repeated into many calls, glued to marker spam, and deepened into nesting past
    every bound."""
    pieces = st.sampled_from(valid) | st.sampled_from(markers) | st.text(max_size=20)
    cut = st.tuples(st.sampled_from(valid), st.floats(0, 1)).map(lambda t: t[0][: int(len(t[0]) * t[1])])
    deep = st.tuples(st.sampled_from(valid), st.integers(1, 20_000), st.sampled_from(["[", "{\"a\":", "{"]),
                     st.floats(0, 1)).map(lambda t: _deepened(*t))
    return st.one_of(
        st.lists(pieces, max_size=12).map("".join),
        cut,
        st.tuples(st.sampled_from(valid), edits).map(lambda t: _mutate(*t)),
        st.tuples(st.sampled_from(valid), st.integers(2, 3000)).map(lambda t: t[0] * t[1]),
        st.tuples(st.sampled_from(markers), st.integers(2, 5000)).map(lambda t: t[0] * t[1]),
        deep,
        st.tuples(deep | cut, st.lists(pieces, max_size=4).map("".join)).map("".join),
    )


def special_markers(text: str) -> list[str]:
    """The tag-like pieces of ``text`` (``<|call|>``, ``<tool_call>``, ``<arg_key>``)."""
    return re.findall(r"<[^<>\s]{1,40}>", text)


def _deepened(reply: str, depth: int, opener: str, at: float) -> str:
    """``reply`` with ``depth`` unclosed ``opener`` inserted inside its first argument value."""
    i = reply.find(":", reply.find("{") + 1) + 1 or int(len(reply) * at)
    return reply[:i] + opener * depth + reply[i:]


# ---------------------------------------------------------------------------- snapshots
hostile_values = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.sampled_from([-1, 10**4000]),
    st.floats(), st.text(max_size=30), st.sampled_from(["1e10000000", "i:1e10000000",
    "q:1e10000000", "f:inf", "\ud800", "x" * 100_000]),
    st.integers(1, 3000).map(lambda n: _nested(n)),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


@functools.cache
def zip_bomb(size: int) -> bytes:
    """A snapshot whose body inflates to ``size`` bytes of spaces (about 1000:1), built in
    chunks so that building it costs no memory."""
    deflater = zlib.compressobj(9)
    parts = [b"TRACESNAP1Z", deflater.compress(b'{"env_id":"a:B"}\n')]
    chunk = b" " * 2**20
    for _ in range(size // len(chunk)):
        parts.append(deflater.compress(chunk))
    parts.append(deflater.compress(b" " * (size % len(chunk))) + deflater.flush())
    return b"".join(parts)


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (keys and indexes) into a JSON value."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += paths(item, (*prefix, index))
    return found


def replaced(value: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: replaced(value[head], rest, new)}
    return [replaced(v, rest, new) if i == head else v for i, v in enumerate(value)]


def value_at(value: Any, path: tuple) -> Any:
    for key in path:
        value = value[key]
    return value


def state_mutations(state: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """States one value away from ``state``: a value replaced (by a hostile value, or by a
    container found elsewhere in the same state: a folder where a file or a tweet belongs), a
    key dropped or added."""
    all_paths = paths(state)
    containers = [p for p in all_paths if isinstance(value_at(state, p), dict | list)]

    def drop(path: tuple) -> Any:
        if not path:
            return {}
        parent = state
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, dict):
            return replaced(state, path[:-1], {k: v for k, v in parent.items() if k != path[-1]})
        return replaced(state, path[:-1], [v for i, v in enumerate(parent) if i != path[-1]])

    return st.one_of(
        st.tuples(st.sampled_from(all_paths), hostile_values).map(lambda t: replaced(state, *t)),
        st.tuples(st.sampled_from(all_paths[1:] or [()]), st.sampled_from(containers)).map(
            lambda t: replaced(state, t[0], value_at(state, t[1]))),
        st.sampled_from(all_paths[1:] or [()]).map(drop),
        st.tuples(st.text(max_size=8), hostile_values).map(lambda t: {**state, t[0]: t[1]}),
    )


def rng_states() -> st.SearchStrategy[dict[str, Any]]:
    """NumPy bit-generator states under any generator's name, some one value away: each is
    valid for its own generator and a near miss (keys it knows, shapes it does not) for another."""
    states = _bit_generator_states()
    relabelled = st.tuples(st.sampled_from(states), st.sampled_from([s["bit_generator"] for s in states])).map(
        lambda t: {**t[0], "bit_generator": t[1]})
    return relabelled | relabelled.flatmap(state_mutations)


@functools.cache
def _bit_generator_states() -> list[dict[str, Any]]:
    import numpy as np

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value.tolist() if isinstance(value, np.ndarray) else value

    return [plain(getattr(np.random, name)(0).state)
            for name in ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")]


def byte_mutations(data: bytes) -> st.SearchStrategy[bytes]:
    """Bytes near a valid snapshot: flipped, cut, inserted, re-compressed bodies, bombs."""
    def flip(t: tuple[int, int]) -> bytes:
        i = t[0] % len(data)
        return data[:i] + bytes([data[i] ^ (1 + t[1] % 255)]) + data[i + 1:]

    return st.one_of(
        st.tuples(st.integers(0, 10**6), st.integers(0, 254)).map(flip),
        st.integers(0, len(data)).map(lambda n: data[:n]),
        st.tuples(st.integers(0, len(data)), st.binary(max_size=20)).map(
            lambda t: data[:t[0]] + t[1] + data[t[0]:]),
        st.binary(max_size=200).map(lambda b: b"TRACESNAP1Z" + zlib.compress(b)),
        st.binary(max_size=200).map(lambda b: b"TRACESNAP1J" + b),
        st.integers(1, 200_000).map(lambda n: b'TRACESNAP1J{"env_id":"a:B"}\n' + b"[" * n + b"]" * n),
        st.just(zip_bomb(2**20)),  # over-cap bombs: test_zip_bomb_is_refused_with_bounded_memory
    )


def unchanged_after_refusal(env: Any, restore: Callable[[], None]) -> bool:
    """Run ``restore``; if it refuses (``ValueError``), the env must be exactly as before.
    Returns whether the restore was accepted."""
    before = env.snapshot().to_bytes()
    try:
        restore()
    except ValueError:
        assert env.snapshot().to_bytes() == before, "a refused restore changed the env"
        return False
    return True
