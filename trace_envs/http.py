"""Bounded HTTP calls: one deadline for the whole call, a cap on the reply, retries inside it.

httpx's timeouts apply to each socket operation, so a server that drips its reply a byte at a
time can hold a call for minutes, and a huge reply is read whole. Every client of the project
(the search client here, the inference backends in ``trace_agents``) goes through :func:`call`
or :func:`acall`, which guarantee:

- each attempt (pool wait, connect, send, every read of headers and body) ends by its deadline:
  the async path cancels the attempt with :func:`asyncio.timeout`; the sync path clamps every
  socket operation to the time left (:func:`sync_client`'s network backend);
- the reply body is streamed and refused past ``max_bytes`` (and compressed replies are not
  accepted, so the cap counts what is kept);
- connection trouble, timeouts, 408/429/5xx and replies the caller's ``parse`` marks
  :class:`Transient` are retried with exponential backoff; no attempt or pause outlasts the
  overall deadline; other 4xx are not retried;
- what still fails raises :class:`CallFailed`, which each layer turns into its own error.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import random
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpcore
import httpx

T = TypeVar("T")

RETRIED_STATUS = frozenset({408, 429})
"""4xx statuses that mean "try again later" (5xx are always retried)."""


class Transient(Exception):
    """A failure worth another attempt (raise it from ``parse`` for an unreadable reply)."""


class CallFailed(Exception):
    """The call failed for good: refused (4xx), or every attempt failed, or time ran out."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        """The HTTP status of a refusal; None for transport failures and bad replies."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often to try and how long to wait in between (waits never pass the deadline)."""

    attempts: int = 4
    backoff_s: float = 0.5
    """First wait; doubled at each retry, up to ``max_backoff_s``."""
    max_backoff_s: float = 8.0
    jitter: float = 0.25
    """Each wait is stretched by up to this fraction, at random (spreads retry storms)."""

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.backoff_s < 0 or self.max_backoff_s < 0 or self.jitter < 0:
            raise ValueError(f"invalid retry policy {self}")

    def pause(self, retry: int) -> float:
        """The wait before retry number ``retry`` (1 for the first retry)."""
        wait = min(self.max_backoff_s, self.backoff_s * 2 ** (retry - 1))
        return wait * (1 + self.jitter * random.random())


@dataclass(frozen=True)
class Bounds:
    """Time and size bounds of one call."""

    total_s: float
    """The whole call, every attempt and pause included."""
    attempt_s: float | None = None
    """One attempt (connect, send, headers, body); None: until the overall deadline."""
    connect_s: float | None = None
    """Connecting (within the attempt's time)."""
    max_bytes: int = 64 * 2**20
    """Largest reply body read; a longer one fails the call."""

    def __post_init__(self) -> None:
        if self.total_s <= 0 or (self.attempt_s is not None and self.attempt_s <= 0):
            raise ValueError("timeouts must be positive")
        if self.max_bytes < 1:
            raise ValueError("max_bytes must be positive")


@dataclass(frozen=True)
class Reply:
    status: int
    content_type: str
    body: bytearray
    """As read (not copied to ``bytes``: a reply at the cap then costs the cap, not twice)."""

    def snippet(self, n: int = 200) -> str:
        return self.body[:n].decode("utf-8", "replace")


# ----------------------------------------------------------------- sync deadline enforcement
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("http_deadline",
                                                                         default=None)


def _clamp(timeout: float | None, error: type[Exception]) -> float | None:
    """``timeout`` cut to the time left before the current call's deadline."""
    deadline = _deadline.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("the call's deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _clamp(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _clamp(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._inner.start_tls(
            ssl_context, server_hostname, _clamp(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's socket backend with every blocking operation cut to the call's deadline."""

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Any = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._inner.connect_tcp(
            host, port, _clamp(timeout, httpcore.ConnectTimeout), local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Any = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._inner.connect_unix_socket(
            path, _clamp(timeout, httpcore.ConnectTimeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


IDENTITY = {"accept-encoding": "identity"}
"""Replies are asked uncompressed: the size cap then counts what is kept."""


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One verifying TLS context for every client (loading the CA bundle takes ~0.1 s)."""
    return httpx.create_ssl_context()


def sync_client(limits: httpx.Limits = httpx.Limits(), **options: Any) -> httpx.Client:
    """An ``httpx.Client`` whose calls through :func:`call` end by their deadline.

    httpx takes no network backend, so its transport's connection pool is rebuilt with one
    (plain HTTP/1.1 and TLS). Proxies from the environment are not used: their transports would
    not clamp."""
    transport = httpx.HTTPTransport(limits=limits, verify=_ssl_context())
    transport._pool = httpcore.ConnectionPool(  # noqa: SLF001 - the one way in for a backend
        ssl_context=_ssl_context(),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=_DeadlineBackend(),
    )
    return httpx.Client(transport=transport, headers=IDENTITY, trust_env=False, **options)


def async_client(limits: httpx.Limits = httpx.Limits(), **options: Any) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` for :func:`acall` (which bounds each attempt by cancellation)."""
    headers = {**IDENTITY, **options.pop("headers", {})}
    return httpx.AsyncClient(limits=limits, headers=headers, verify=_ssl_context(), **options)


@contextlib.contextmanager
def _until(deadline: float) -> Iterator[None]:
    token = _deadline.set(deadline)
    try:
        yield
    finally:
        _deadline.reset(token)


# ----------------------------------------------------------------------------- one attempt
def _timeout(bounds: Bounds, left: float) -> httpx.Timeout:
    connect = left if bounds.connect_s is None else min(bounds.connect_s, left)
    return httpx.Timeout(left, connect=connect)


def _check_head(response: httpx.Response, max_bytes: int) -> None:
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise Transient(f"compressed reply ({encoding}) although none was asked for")
    length = response.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise CallFailed(f"reply of {int(length)} bytes exceeds the limit of {max_bytes}")


def _add(body: bytearray, chunk: bytes, max_bytes: int) -> None:
    body += chunk
    if len(body) > max_bytes:
        raise CallFailed(f"reply exceeds the limit of {max_bytes} bytes")


def _reply(response: httpx.Response, body: bytearray) -> Reply:
    return Reply(response.status_code, response.headers.get("content-type", ""), body)


def _judge(reply: Reply, parse: Callable[[Reply], T]) -> T:
    if reply.status >= 500 or reply.status in RETRIED_STATUS:
        raise Transient(f"server error: HTTP {reply.status}: {reply.snippet()}")
    if reply.status >= 400:
        raise CallFailed(f"refused: HTTP {reply.status}: {reply.snippet(500)}", reply.status)
    return parse(reply)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, Transient):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _overall(started: float, bounds: Bounds, shared: float | None) -> float:
    own = started + bounds.total_s
    return own if shared is None else min(shared, own)


def _attempt_deadline(bounds: Bounds, deadline: float, now: float) -> float:
    return deadline if bounds.attempt_s is None else min(deadline, now + bounds.attempt_s)


def _failed(what: str, attempts: int, started: float, problem: str) -> CallFailed:
    plural = "" if attempts == 1 else "s"
    return CallFailed(f"{what} failed after {attempts} attempt{plural} in "
                      f"{time.monotonic() - started:.1f}s: {problem}")


# ---------------------------------------------------------------------------------- calls
def call(client: httpx.Client, method: str, url: str, *, parse: Callable[[Reply], T],
         bounds: Bounds, retry: RetryPolicy, content: bytes | None = None,
         headers: dict[str, str] | None = None, deadline: float | None = None,
         on_retry: Callable[[str], None] | None = None) -> T:
    """One bounded call with retries (``client`` from :func:`sync_client`).

    ``deadline`` (a :func:`time.monotonic` time) replaces ``now + bounds.total_s`` when calls
    share one; ``on_retry`` hears the problem before each retry."""
    started = time.monotonic()
    deadline = _overall(started, bounds, deadline)
    problem, attempts = "no time left for an attempt", 0
    for attempt in range(retry.attempts):
        if attempt:
            pause = min(retry.pause(attempt), deadline - time.monotonic())
            if pause > 0:
                time.sleep(pause)
            if on_retry is not None:
                on_retry(problem)
        now = time.monotonic()
        if now >= deadline:
            break
        attempts += 1
        until = _attempt_deadline(bounds, deadline, now)
        try:
            with _until(until), client.stream(method, url, content=content, headers=headers,
                                              timeout=_timeout(bounds, until - now)) as response:
                _check_head(response, bounds.max_bytes)
                body = bytearray()
                for chunk in response.iter_raw():
                    _add(body, chunk, bounds.max_bytes)
            return _judge(_reply(response, body), parse)
        except (httpx.HTTPError, Transient, OSError) as exc:
            problem = _describe(exc)
    raise _failed(f"{method} {url}", attempts, started, problem)


async def acall(client: httpx.AsyncClient, method: str, url: str, *,
                parse: Callable[[Reply], T], bounds: Bounds, retry: RetryPolicy,
                content: bytes | None = None, headers: dict[str, str] | None = None,
                deadline: float | None = None,
                on_retry: Callable[[str], None] | None = None) -> T:
    """Like :func:`call`, for an ``httpx.AsyncClient`` (from :func:`async_client`)."""
    started = time.monotonic()
    deadline = _overall(started, bounds, deadline)
    problem, attempts = "no time left for an attempt", 0
    for attempt in range(retry.attempts):
        if attempt:
            pause = min(retry.pause(attempt), deadline - time.monotonic())
            if pause > 0:
                await asyncio.sleep(pause)
            if on_retry is not None:
                on_retry(problem)
        now = time.monotonic()
        if now >= deadline:
            break
        attempts += 1
        until = _attempt_deadline(bounds, deadline, now)
        try:
            async with asyncio.timeout(until - now):
                reply = await _afetch(client, method, url, content, headers,
                                      _timeout(bounds, until - now), bounds.max_bytes)
            return _judge(reply, parse)
        except TimeoutError:
            problem = f"no complete reply within {until - now:.1f}s"
        except (httpx.HTTPError, Transient, OSError) as exc:
            problem = _describe(exc)
    raise _failed(f"{method} {url}", attempts, started, problem)


async def _afetch(client: httpx.AsyncClient, method: str, url: str, content: bytes | None,
                  headers: dict[str, str] | None, timeout: httpx.Timeout,
                  max_bytes: int) -> Reply:
    async with client.stream(method, url, content=content, headers=headers,
                             timeout=timeout) as response:
        _check_head(response, max_bytes)
        body = bytearray()
        async for chunk in response.aiter_raw():
            _add(body, chunk, max_bytes)
    return _reply(response, body)
