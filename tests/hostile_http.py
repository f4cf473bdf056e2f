"""A hostile HTTP server on loopback, for testing that clients stay bounded.

It answers every request with the :class:`Plan` currently set: any status and body, a reply
dripped a byte at a time (head included, or not), an endless body, a connection cut short.
It is raw asyncio rather than a web framework so that it can break HTTP itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

MAX_LIFETIME_S = 30.0
"""No connection is served longer than this, whatever the client does."""

SLACK = 1.5
"""Seconds a client may overrun its deadline in the tests: a loaded two-core machine can stall a
thread for a second; the bugs these tests guard took 49 s and over 70 s."""


@dataclass(frozen=True)
class Plan:
    body: bytes = b"{}"
    status: int = 200
    content_type: str = "application/json"
    drip_s: float = 0.0
    """Pause between bytes (0: send at once)."""
    drip_head: bool = False
    """Drip the status line and headers too, not only the body."""
    endless: bool = False
    """After the body, keep sending bytes until the client hangs up (no Content-Length)."""
    cut_at: int | None = None
    """Close the connection after this many bytes of the body."""
    extra_headers: tuple[tuple[str, str], ...] = ()


class HostileServer:
    """``with HostileServer() as server:`` serves ``server.plan`` at ``server.url``."""

    def __init__(self) -> None:
        self.plan = Plan()
        self.requests = 0
        self.sent: list[int] = []
        """Bytes written per connection (what a client could have had to read)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="hostile-http")

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    def __enter__(self) -> HostileServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the hostile server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self._ready.set()
        async with self._server:
            await self._stop.wait()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sent = [0]
        try:
            async with asyncio.timeout(MAX_LIFETIME_S):
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                self.requests += 1
                await self._answer(writer, self.plan, sent)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ValueError):
            pass  # the client hung up or misbehaved: this server has nothing to prove
        finally:
            self.sent.append(sent[0])
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    @staticmethod
    async def _answer(writer: asyncio.StreamWriter, plan: Plan, sent: list[int]) -> None:
        headers = [("content-type", plan.content_type), ("connection", "close"),
                   *plan.extra_headers]
        if not plan.endless:
            headers.append(("content-length", str(len(plan.body))))
        head = f"HTTP/1.1 {plan.status} Whatever\r\n".encode() + b"".join(
            f"{k}: {v}\r\n".encode() for k, v in headers) + b"\r\n"
        body = plan.body if plan.cut_at is None else plan.body[: plan.cut_at]

        async def send(data: bytes, drip: bool) -> None:
            if drip and plan.drip_s > 0:
                for i in range(len(data)):
                    writer.write(data[i : i + 1])
                    await writer.drain()
                    sent[0] += 1
                    await asyncio.sleep(plan.drip_s)
            else:
                writer.write(data)
                await writer.drain()
                sent[0] += len(data)

        await send(head, plan.drip_head)
        await send(body, True)
        if plan.endless:
            chunk = b"x" * 65536
            while True:
                await send(chunk, False)


@contextlib.contextmanager
def timed() -> Iterator[list[float]]:
    """``with timed() as t: ...``; ``t[0]`` is the elapsed seconds afterwards."""
    box: list[float] = []
    start = time.monotonic()
    try:
        yield box
    finally:
        box.append(time.monotonic() - start)


# ------------------------------------------------------------------ hostile replies
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                   max_size=4),
    max_leaves=12,
)
"""Any JSON value."""

NASTY_BODIES = [
    b"", b"null", b"[]", b"\"text\"", b"{", b"\xff\xfe{}", b"\xef\xbb\xbf{}",
    b"[" * 100_000 + b"]" * 100_000,                      # deep nesting
    b'{"a": ' + b"9" * 100_000 + b"}",                    # a number past every digit limit
    b'{"a": NaN, "b": -Infinity}', b'{"result": 1e400}',
    b'{"text": "\xed\xa0\x80"}', b'{"text": "\\ud800"}',  # lone surrogates: raw, escaped
]


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


def _replace(value: Any, path: tuple, new: Any, delete: bool) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    copy = dict(value) if isinstance(value, dict) else list(value)
    if delete and not rest:
        del copy[head]
    else:
        copy[head] = _replace(copy[head], rest, new, delete)
    return copy


@st.composite
def mutated(draw: st.DrawFn, template: Any) -> bytes:
    """``template`` with one value replaced by any JSON value, or one key removed."""
    path = draw(st.sampled_from(_paths(template)))
    delete = bool(path) and draw(st.booleans())
    value = _replace(template, path, None if delete else draw(JSON), delete)
    return json.dumps(value, allow_nan=True).encode()


def bodies(template: Any) -> st.SearchStrategy[bytes]:
    """Reply bodies from valid to garbage: the template, mutated, cut short, any JSON, any
    bytes, and a few known-nasty ones."""
    valid = json.dumps(template).encode()
    return st.one_of(
        st.just(valid),
        mutated(template),
        st.integers(0, len(valid) - 1).map(lambda n: valid[:n]),
        JSON.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=200),
        st.sampled_from(NASTY_BODIES),
    )


@st.composite
def plans(draw: st.DrawFn, template: Any, *, drip_s: float) -> Plan:
    """A hostile reply: a body from :func:`bodies`, any status, maybe dripped, endless or cut."""
    body = draw(bodies(template))
    status = draw(st.sampled_from([200, 200, 200, 201, 204, 301, 400, 404, 408, 429, 500, 503]))
    how = draw(st.sampled_from(["plain"] * 5 + ["drip", "drip-head", "endless", "cut"]))
    return Plan(
        body=body, status=status,
        content_type=draw(st.sampled_from(["application/json", "application/msgpack",
                                           "text/plain"])),
        drip_s=drip_s if how.startswith("drip") else 0.0,
        drip_head=how == "drip-head",
        endless=how == "endless",
        cut_at=draw(st.integers(0, max(len(body) - 1, 0))) if how == "cut" else None,
    )
