"""A local stand-in for SGLang and vLLM servers, backed by the in-process transformers model.

It speaks the request/response shapes the real servers use (SGLang ``/generate`` with
``meta_info``; OpenAI ``/v1/completions`` and ``/v1/chat/completions`` with vLLM's extensions
``return_token_ids`` and ``include_stop_str_in_output``), so the HTTP backends are tested against
the same bytes they will meet in production, on loopback, with no GPU. Chat completions take
``tools=`` and answer with ``tool_calls`` as vLLM's Hermes tool parser and Qwen3 reasoning parser
do (``<tool_call>`` blocks, ``<think>``), or replay a script of recorded assistant messages of the
OpenAI shape (``script``: the i-th answers a conversation holding i assistant messages, so
concurrent episodes each get their own turn's reply); every chat request is kept in
``chat_requests`` for tests to check. It is honest about prefix
caching: a token trie remembers every served sequence and each reply reports the longest cached
prefix of its prompt, so the accounting of branched continuations is exercised. Faults (5xx, slow
replies, truncated JSON) can be injected per request; kill the process to test a dead server.

    python -m trace_agents.testing.standin_server --model tiny --port 30000
    python -m trace_agents.testing.standin_server --script replies.json --port 30000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from trace_agents.backends.base import Completion, SamplingParams
from trace_agents.backends.hf import HFBackend

Fault = Literal["error500", "slow", "truncate"]


class PrefixCache:
    """Token trie of served sequences; reports the longest cached prefix of a prompt.

    When it holds more than ``capacity`` tokens it forgets everything (a crude eviction that can
    only under-report hits).
    """

    def __init__(self, capacity: int = 1_000_000) -> None:
        self.capacity = capacity
        self._root: dict[int, dict] = {}
        self.size = 0
        self.hits = 0
        self.prompt_tokens = 0

    def clear(self) -> None:
        """Forget every cached sequence (the weights changed: the cached KV is stale)."""
        self._root, self.size = {}, 0

    def match(self, ids: list[int]) -> int:
        node, n = self._root, 0
        for t in ids:
            node = node.get(t)  # type: ignore[assignment]
            if node is None:
                break
            n += 1
        cached = min(n, max(len(ids) - 1, 0))  # the last prompt token is always computed
        self.hits += cached
        self.prompt_tokens += len(ids)
        return cached

    def insert(self, ids: list[int]) -> None:
        if self.size + len(ids) > self.capacity:
            self._root, self.size = {}, 0
        node = self._root
        for t in ids:
            if t not in node:
                node[t] = {}
                self.size += 1
            node = node[t]


class FaultInjector:
    """Faults to apply to the next requests, in order (one per request)."""

    def __init__(self, slow_s: float = 5.0) -> None:
        self.pending: deque[Fault] = deque()
        self.slow_s = slow_s
        self.applied: list[Fault] = []

    def inject(self, fault: Fault, times: int = 1) -> None:
        self.pending.extend([fault] * times)

    def next(self) -> Fault | None:
        if not self.pending:
            return None
        fault = self.pending.popleft()
        self.applied.append(fault)
        return fault


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _SGLangSampling(_Lenient):
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 128
    stop: list[str] | str | None = None
    no_stop_trim: bool = False
    sampling_seed: int | None = None
    stop_token_ids: list[int] | None = None


class _SGLangRequest(_Lenient):
    text: str | None = None
    input_ids: list[int] | None = None
    sampling_params: _SGLangSampling = Field(default_factory=_SGLangSampling)
    return_logprob: bool = False
    return_hidden_states: bool | None = None


class _OpenAIRequest(_Lenient):
    model: str | None = None
    prompt: str | list[int] | None = None
    messages: list[dict[str, Any]] | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] | str | None = None
    seed: int | None = None
    stop_token_ids: list[int] | None = None
    logprobs: bool | int | None = None
    include_stop_str_in_output: bool = False
    return_token_ids: bool = False
    tools: list[dict[str, Any]] | None = None


def _stops(stop: list[str] | str | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(stop)


def _trim(text: str, stops: tuple[str, ...], keep: bool) -> tuple[str, str | None]:
    """Cut the text at the first stop string (after it when ``keep``); return the match too."""
    hits = [(text.find(s), s) for s in stops if s in text]
    if not hits:
        return text, None
    at, stop = min(hits)
    return text[: at + len(stop)] if keep else text[:at], stop


_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_THINK = re.compile(r"\s*<think>(.*?)</think>", re.DOTALL)


def tool_message(text: str) -> dict[str, Any]:
    """A generated reply as vLLM's Hermes tool parser and Qwen3 reasoning parser return it: the
    ``<think>`` part as ``reasoning_content``, ``<tool_call>`` JSON blocks as ``tool_calls``
    (arguments JSON-encoded) and the rest as content; a reply with an unreadable call stays text."""
    message: dict[str, Any] = {"role": "assistant", "content": text, "tool_calls": []}
    if (think := _THINK.match(text)) is not None:
        message["reasoning_content"], text = think.group(1).strip(), text[think.end():]
        message["content"] = text
    try:
        calls = [json.loads(block) for block in _CALL.findall(text)]
    except (ValueError, RecursionError):
        return message
    if not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in calls):
        return message
    message["tool_calls"] = [
        {"id": f"chatcmpl-tool-{uuid.uuid4().hex[:16]}", "type": "function",
         "function": {"name": c["name"], "arguments": json.dumps(c.get("arguments", {}))}}
        for c in calls
    ]
    if message["tool_calls"]:
        message["content"] = _CALL.sub("", text).strip() or None
    return message


class StandinApp:
    def __init__(self, backend: HFBackend | None, *, model_name: str = "standin",
                 cache: PrefixCache | None = None, faults: FaultInjector | None = None,
                 script: Sequence[Mapping[str, Any]] | None = None) -> None:
        self.backend = backend
        """The in-process model; None for a stand-in that only replays ``script``."""
        self.model_name = model_name
        self.cache = cache or PrefixCache()
        self.faults = faults or FaultInjector()
        self.requests = 0
        self.script = None if script is None else [dict(m) for m in script]
        """Recorded assistant messages that answer chat completions instead of the model."""
        self.chat_requests: deque[Any] = deque(maxlen=256)
        """The latest chat-completion request bodies, as sent."""
        self.app = Starlette(routes=[
            Route("/health", self.health),
            Route("/health_generate", self.health),
            Route("/v1/models", self.models),
            Route("/generate", self.sglang_generate, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            # weight updates as SGLang and vLLM (VLLM_SERVER_DEV_MODE=1) expose them
            Route("/update_weights_from_disk", self.update_weights_from_disk, methods=["POST"]),
            Route("/flush_cache", self.flush_cache, methods=["POST"]),
            Route("/collective_rpc", self.collective_rpc, methods=["POST"]),
            Route("/reset_prefix_cache", self.flush_cache, methods=["POST"]),
        ])
        self.model_path: str | None = None
        """Where ``reload_weights`` reads from (vLLM reloads from the directory it serves)."""
        self.weight_updates = 0

    async def health(self, request: Request) -> Response:
        return PlainTextResponse("ok")

    def _load_weights(self, path: str) -> None:
        from safetensors.torch import load_file

        files = sorted(Path(path).glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no safetensors in {path}")
        state = {k: v for f in files for k, v in load_file(str(f)).items()}
        backend = self._model()
        if "lm_head.weight" not in state and getattr(backend.model.config, "tie_word_embeddings", False):
            state["lm_head.weight"] = state["model.embed_tokens.weight"]
        backend.load_weights(state)
        self.weight_updates += 1

    async def update_weights_from_disk(self, request: Request) -> Response:
        body = await request.json()
        try:
            self._load_weights(body["model_path"])
        except (KeyError, FileNotFoundError, RuntimeError, ValueError) as exc:
            return JSONResponse({"success": False, "message": str(exc)}, status_code=400)
        return JSONResponse({"success": True, "message": "Succeeded to update model weights."})

    async def collective_rpc(self, request: Request) -> Response:
        body = await request.json()
        if body.get("method") != "reload_weights" or self.model_path is None:
            return JSONResponse({"error": "only reload_weights with a model_path"}, status_code=400)
        self._load_weights(self.model_path)
        return JSONResponse({"results": [None]})

    async def flush_cache(self, request: Request) -> Response:
        self.cache.clear()
        return PlainTextResponse("Cache flushed.")

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": self.model_name, "object": "model"}]})

    def _model(self) -> HFBackend:
        if self.backend is None:
            raise ValueError("this stand-in has no model: it replays a script of chat replies")
        return self.backend

    async def _run(self, ids: list[int], params: SamplingParams) -> tuple[Completion, int]:
        cached = self.cache.match(ids)
        completion = await self._model().generate(ids, params)
        self.cache.insert(ids + completion.token_ids)
        return completion, cached

    async def _handle(self, request: Request, schema: type[_Lenient], build: Any) -> Response:
        """Parse, apply an injected fault if any, and answer."""
        self.requests += 1
        try:
            body = schema.model_validate(await request.json())
        except (ValidationError, json.JSONDecodeError) as exc:
            return JSONResponse({"error": {"message": str(exc), "type": "invalid_request"}}, 400)
        fault = self.faults.next()
        if fault == "error500":
            return JSONResponse({"error": {"message": "injected failure"}}, 500)
        if fault == "slow":
            await asyncio.sleep(self.faults.slow_s)
        try:
            payload = await build(body)
        except ValueError as exc:
            return JSONResponse({"error": {"message": str(exc), "type": "invalid_request"}}, 400)
        if fault == "truncate":
            raw = json.dumps(payload).encode()
            return Response(raw[: len(raw) // 2], media_type="application/json")
        return JSONResponse(payload)

    async def sglang_generate(self, request: Request) -> Response:
        return await self._handle(request, _SGLangRequest, self._sglang)

    async def _sglang(self, req: _SGLangRequest) -> dict[str, Any]:
        if req.input_ids is not None:
            ids = req.input_ids
        elif req.text is not None:
            ids = self._model().tokenizer.encode(req.text, add_special_tokens=False)
        else:
            raise ValueError("give text or input_ids")
        sp = req.sampling_params
        stops = _stops(sp.stop)
        states = bool(req.return_hidden_states)
        if states and sp.max_new_tokens != 1:
            raise ValueError("the stand-in returns the hidden states of one-token requests only")
        params = SamplingParams(sp.temperature, sp.top_p, sp.max_new_tokens, stops, sp.sampling_seed,
                                tuple(sp.stop_token_ids or ()), return_hidden_states=states)
        out, cached = await self._run(list(ids), params)
        text, matched = _trim(out.text, stops, keep=sp.no_stop_trim)
        finish: dict[str, Any] = {"type": out.finish_reason}
        if out.finish_reason == "length":
            finish["length"] = len(out.token_ids)
        elif matched is not None:
            finish["matched"] = matched
        elif out.token_ids:
            finish["matched"] = out.token_ids[-1]
        meta: dict[str, Any] = {
            "id": uuid.uuid4().hex, "finish_reason": finish, "prompt_tokens": len(ids),
            "completion_tokens": len(out.token_ids), "cached_tokens": cached,
        }
        if states:  # the prompt's last row only (SGLang sends every position it computed)
            meta["hidden_states"] = [list(out.prompt_state or ())]
        if req.return_logprob:
            meta["output_token_logprobs"] = [
                [lp, t, None] for lp, t in zip(out.logprobs or [], out.token_ids)
            ]
        return {"text": text, "output_ids": out.token_ids, "meta_info": meta}

    async def completions(self, request: Request) -> Response:
        return await self._handle(request, _OpenAIRequest, self._completions)

    async def chat_completions(self, request: Request) -> Response:
        with contextlib.suppress(ValueError):  # malformed JSON: _handle answers it
            self.chat_requests.append(await request.json())
        return await self._handle(request, _OpenAIRequest, self._chat)

    def _params(self, req: _OpenAIRequest) -> SamplingParams:
        max_tokens = req.max_completion_tokens or req.max_tokens or 16
        return SamplingParams(req.temperature, req.top_p, max_tokens, _stops(req.stop), req.seed,
                              tuple(req.stop_token_ids or ()))

    async def _completions(self, req: _OpenAIRequest) -> dict[str, Any]:
        if req.prompt is None:
            raise ValueError("'prompt' is required")
        tok = self._model().tokenizer
        ids = list(req.prompt) if isinstance(req.prompt, list) else tok.encode(req.prompt, add_special_tokens=False)
        params = self._params(req)
        out, cached = await self._run(ids, params)
        text, _ = _trim(out.text, params.stop, keep=req.include_stop_str_in_output)
        logprobs = None
        if req.logprobs is not None and req.logprobs is not False:
            logprobs = {
                "tokens": [tok.decode([t]) for t in out.token_ids],
                "token_logprobs": out.logprobs,
                "top_logprobs": None,
                "text_offset": None,
            }
        choice = {"index": 0, "text": text, "logprobs": logprobs,
                  "finish_reason": out.finish_reason, "stop_reason": None}
        if req.return_token_ids:
            choice["token_ids"], choice["prompt_token_ids"] = out.token_ids, ids
        return self._envelope("text_completion", choice, len(ids), len(out.token_ids), cached)

    async def _chat(self, req: _OpenAIRequest) -> dict[str, Any]:
        if not req.messages:
            raise ValueError("'messages' is required")
        if self.script is not None:
            return self._scripted(req.messages)
        tok = self._model().tokenizer
        text = tok.apply_chat_template(req.messages, tools=req.tools or None, tokenize=False,
                                       add_generation_prompt=True)
        ids = tok.encode(text, add_special_tokens=False)
        params = self._params(req)
        out, cached = await self._run(ids, params)
        content, _ = _trim(out.text, params.stop, keep=req.include_stop_str_in_output)
        message = tool_message(content) if req.tools else {"role": "assistant", "content": content}
        choice: dict[str, Any] = {
            "index": 0, "message": message,
            "finish_reason": "tool_calls" if message.get("tool_calls") else out.finish_reason,
            "logprobs": None if not req.logprobs else {"content": [
                {"token": tok.decode([t]), "logprob": lp, "bytes": None, "top_logprobs": []}
                for t, lp in zip(out.token_ids, out.logprobs or [])
            ]},
        }
        if req.return_token_ids:
            choice["token_ids"], choice["prompt_token_ids"] = out.token_ids, ids
        return self._envelope("chat.completion", choice, len(ids), len(out.token_ids), cached)

    def _scripted(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        assert self.script is not None
        turn = sum(1 for m in messages if m.get("role") == "assistant")
        if turn >= len(self.script):
            raise ValueError(f"the script has {len(self.script)} replies; this conversation asks "
                             f"for reply {turn + 1}")
        message = {"role": "assistant", "content": None, **self.script[turn]}
        finish = "tool_calls" if message.get("tool_calls") else "stop"
        choice = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
        return self._envelope("chat.completion", choice, 0, 0, 0)

    def _envelope(self, kind: str, choice: dict[str, Any], prompt_tokens: int,
                  completion_tokens: int, cached: int) -> dict[str, Any]:
        return {
            "id": f"cmpl-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()),
            "model": self.model_name, "choices": [choice],
            "usage": {
                "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": cached},
            },
        }


class StandinServer:
    """The stand-in app served by uvicorn on 127.0.0.1 (a free port) in a background thread;
    without a model it only replays ``script`` (chat completions)."""

    def __init__(self, model: Any = None, tokenizer: Any = None, *, port: int = 0, max_batch: int = 16,
                 model_name: str = "standin", slow_s: float = 5.0,
                 script: Sequence[Mapping[str, Any]] | None = None) -> None:
        import uvicorn

        backend = None if model is None else HFBackend(model, tokenizer, max_batch=max_batch)
        self.standin = StandinApp(backend, model_name=model_name, faults=FaultInjector(slow_s),
                                  script=script)
        config = uvicorn.Config(self.standin.app, host="127.0.0.1", port=port,
                                log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="standin-server", daemon=True)

    @property
    def faults(self) -> FaultInjector:
        return self.standin.faults

    @property
    def cache(self) -> PrefixCache:
        return self.standin.cache

    def start(self, timeout_s: float = 30.0) -> StandinServer:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the stand-in server did not start")
            time.sleep(0.01)
        return self

    @property
    def port(self) -> int:
        return self._server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> StandinServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--port", type=int, default=30000)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--script", type=Path,
                        help="a JSON list of assistant messages to replay instead of a model")
    args = parser.parse_args(argv)
    import uvicorn

    from trace_agents.models import smollm2, tiny_qwen3

    if args.script is not None:
        app = StandinApp(None, model_name="standin", script=json.loads(args.script.read_text()))
    else:
        model, tokenizer = tiny_qwen3() if args.model == "tiny" else smollm2()
        app = StandinApp(HFBackend(model, tokenizer, max_batch=args.max_batch), model_name=args.model)
    uvicorn.run(app.app, host="127.0.0.1", port=args.port, log_level="warning", lifespan="off")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
