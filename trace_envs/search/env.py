"""`trace/Search-v0`: multi-hop question answering with a ``search`` tool.

    env = gym.make("trace/Search-v0")                                  # generated suite, BM25
    env = gym.make("trace/Search-v0", retriever="dense")               # MiniLM, exact search
    env = gym.make("trace/Search-v0", suite="hotpot_dev.json", retriever="http",
                   url="http://127.0.0.1:8000")                        # a retrieval server

The suite, corpus and retriever are built once per process and shared read-only by every env
and fork; the episode state is only the searches made so far (queries and retrieved ids).
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Mapping
from concurrent.futures import Executor
from typing import Annotated, Any, Literal, SupportsFloat

import pydantic

from trace_envs.actions import ParsedAction
from trace_envs.core import Response, ToolEnv
from trace_envs.search.client import HttpRetriever
from trace_envs.search.corpus import Corpus, cached_corpus
from trace_envs.search.qa import QAGrader, generated_suite, generated_world, load_qa_file
from trace_envs.search.corpus import Hit
from trace_envs.search.retrievers import RetrievalError, Retriever, shared_retriever
from trace_envs.structured import to_action
from trace_envs.tasks.base import Task, TaskSuite
from trace_envs.tools import Tool, ToolError, tool, with_answer_tool


def render_hits(hits: list[Hit]) -> str:
    """Search-R1's rendering: ``Doc i(Title: <title>) <text>``, one line per hit."""
    if not hits:
        return "No passage matched the query. Try other words."
    return "\n".join(f"Doc {i}(Title: {h.passage.title}) {h.passage.text}"
                     for i, h in enumerate(hits, 1))


@functools.lru_cache(maxsize=16)
def _shared_http(url: str, api: str, timeout: float, retries: int) -> HttpRetriever:
    return HttpRetriever(url, api=api, timeout=timeout, retries=retries)  # type: ignore[arg-type]


@functools.lru_cache(maxsize=16)
def _generated(options_json: str) -> TaskSuite:
    return generated_suite(**json.loads(options_json))


@functools.lru_cache(maxsize=16)
def _qa_file(path: str, qa_format: str) -> TaskSuite:
    return load_qa_file(path, format=qa_format)


class SearchState(pydantic.BaseModel):
    """The search env's tool state in a snapshot (sizes are checked against the env's limits)."""

    model_config = pydantic.ConfigDict(strict=True, extra="forbid")
    queries: list[Annotated[str, pydantic.StringConstraints(max_length=100_000)]]
    retrieved: list[list[Annotated[str, pydantic.StringConstraints(max_length=1_000)]]]


class SearchEnv(ToolEnv):
    """Answer a (multi-hop) question, calling ``search`` as often as needed, then answer.

    The final answer is ``<answer>...</answer>`` (Search-R1's convention) in a text action; a
    structured reply without a tool call (every template dialect); or, with ``answer_tool=True``,
    a call to ``answer``.

    Reward 1.0 when the answer's token F1 against a gold answer reaches ``reward_threshold``
    (``reward_mode="em"``: exact match); ``info["em"]``/``info["f1"]`` always report both.
    """

    instructions = (
        "Answer the question. You know nothing about its subject: find every fact with the "
        "search tool, one hop at a time, reading the passages it returns. When you know the "
        "answer, reply with the answer alone (a short name or phrase) inside <answer></answer>."
    )

    def __init__(
        self,
        suite: str | TaskSuite = "generated",
        *,
        split: str = "all",
        suite_options: dict[str, Any] | None = None,
        qa_format: str = "auto",
        retriever: Literal["bm25", "dense", "http"] | Retriever = "bm25",
        corpus: str | Corpus | None = None,
        index_dir: str | None = None,
        url: str | None = None,
        api: str = "search-r1",
        timeout: float = 10.0,
        retries: int = 2,
        topk: int = 3,
        max_topk: int = 10,
        max_query_chars: int = 1000,
        reward_threshold: float = 0.3,
        reward_mode: Literal["f1", "em"] = "f1",
        max_turns: int = 8,
        answer_tool: bool = False,
        **env_options: Any,
    ) -> None:
        if reward_mode not in ("f1", "em"):
            raise ValueError(f"reward_mode must be 'f1' or 'em', not {reward_mode!r}")
        if not 1 <= topk <= max_topk:
            raise ValueError(f"topk must be between 1 and max_topk={max_topk}")
        generated = suite == "generated"
        if isinstance(suite, TaskSuite):
            tasks = suite
        elif generated:
            tasks = _generated(json.dumps(suite_options or {}, sort_keys=True))
        else:
            tasks = _qa_file(str(suite), qa_format)
        super().__init__(tasks.split(split), max_turns=max_turns, **env_options)  # type: ignore[arg-type]
        self.grader = QAGrader(reward_threshold, reward_mode)
        self.topk, self.max_topk, self.max_query_chars = topk, max_topk, max_query_chars
        if isinstance(corpus, str):
            corpus = cached_corpus(corpus)
        elif corpus is None and generated:
            corpus = generated_world(**(suite_options or {})).corpus
        self.retriever = self._build_retriever(retriever, corpus, index_dir, url, api,
                                               timeout, retries)
        self.queries: list[str] = []
        self.retrieved: list[list[str]] = []
        self.answer_tool = answer_tool
        self._fetched: dict[tuple[str, int], list[Hit] | RetrievalError] = {}
        """Results :meth:`astep` awaited for the step it is running (never mutated: rebound)."""

    def available_tools(self) -> Mapping[str, Tool]:
        return with_answer_tool(self.tools, self.answer_tool)

    @tool(final=True)
    def answer(self, answer: str) -> str:
        """Give the final answer; this ends the episode (offered with ``answer_tool=True``).

        Args:
            answer: The answer alone: a short name or phrase.
        """
        return answer

    @staticmethod
    def _build_retriever(kind, corpus, index_dir, url, api, timeout, retries) -> Retriever:  # type: ignore[no-untyped-def]
        if not isinstance(kind, str):
            return kind
        if kind == "http":
            if not url:
                raise ValueError("retriever='http' needs url=")
            return _shared_http(url, api, float(timeout), int(retries))
        if corpus is None:
            raise ValueError(f"retriever={kind!r} over a QA file needs corpus= (a JSONL path)")
        return shared_retriever(kind, corpus, index_dir)

    @tool
    def search(self, query: str, topk: int | None = None) -> str:
        """Search the knowledge corpus. Returns the best-matching passages as
        'Doc i(Title: ...) text'.

        Args:
            query: A few keywords to search for.
            topk: How many passages to return (optional).
        """
        query, k = self._search_request(query, topk)
        try:
            hits = self._fetched.get((query, k))
            if isinstance(hits, RetrievalError):
                raise hits
            if hits is None:
                hits = self.retriever.search([query], k)[0]
        except RetrievalError as exc:
            raise ToolError(f"search is unavailable right now ({exc}); try again") from None
        self.queries.append(query)
        self.retrieved.append([h.passage.id for h in hits])
        return render_hits(hits)

    def _search_request(self, query: str, topk: int | None) -> tuple[str, int]:
        """The query and k a search call sends, or the :class:`ToolError` the model reads."""
        k = self.topk if topk is None else topk
        if not 1 <= k <= self.max_topk:
            raise ToolError(f"search: topk must be between 1 and {self.max_topk}, got {k}")
        query = query.strip()
        if not query:
            raise ToolError("search: the query is empty; write a few keywords to search for")
        if len(query) > self.max_query_chars:
            raise ToolError(f"search: the query is {len(query)} characters long; keep it under "
                            f"{self.max_query_chars} (a few keywords work best)")
        return query, k

    async def astep(
        self, action: Any, executor: Executor | None = None
    ) -> tuple[str, SupportsFloat, bool, bool, dict[str, Any]]:
        """With a retriever that has an async API (the HTTP client's ``asearch``, whose whole-call
        deadline holds), the action's searches are awaited first, concurrently, and the step then
        runs on their results: a slow retrieval server delays only this episode."""
        asearch = getattr(self.retriever, "asearch", None)
        requests = self._requested_searches(action) if asearch is not None else []
        results = await asyncio.gather(*(self._afetch(asearch, q, k) for q, k in requests))
        self._fetched = dict(zip(requests, results))
        try:
            return await super().astep(action, executor)
        finally:
            self._fetched = {}

    def _requested_searches(self, action: Any) -> list[tuple[str, int]]:
        """The (query, k) of each well-formed search call the action makes (as ``step`` would)."""
        if self.task is None or self.done or "search" not in self.available_tools():
            return []
        parsed = to_action(action, max_chars=self.max_action_chars)  # no env: runs no final tool
        if parsed.error is not None or parsed.answer is not None:
            return []
        requests = []
        for call in parsed.tool_calls[: self.max_calls_per_turn]:
            if call.name != "search" or call.error is not None:
                continue
            try:
                kwargs = self.tools["search"].validate(call.arguments)
                requests.append(self._search_request(kwargs["query"], kwargs["topk"]))
            except ToolError:
                continue
        return list(dict.fromkeys(requests))

    @staticmethod
    async def _afetch(asearch: Any, query: str, k: int) -> list[Hit] | RetrievalError:
        try:
            return (await asearch([query], k))[0]
        except RetrievalError as exc:
            return exc

    def respond(self, action: ParsedAction) -> Response:
        assert self.task is not None
        if action.answer is not None:
            grade = self.grader(action.answer, self.task)
            return Response("", grade.reward, True, {"score": grade.score, **grade.details})
        before = len(self.retrieved)
        response = self.run_tool_calls(action.tool_calls)
        response.info["retrieved"] = self.retrieved[before:]
        return response

    # ------------------------------------------------------------ tool state
    def reset_tool_state(self, task: Task) -> None:
        self.queries, self.retrieved = [], []

    def get_tool_state(self) -> Any:
        return {"queries": list(self.queries), "retrieved": [list(r) for r in self.retrieved]}

    def check_tool_state(self, state: Any, task: Task | None) -> None:
        checked = SearchState.model_validate(state)
        searches = self.max_turns * self.max_calls_per_turn
        if len(checked.queries) != len(checked.retrieved) or len(checked.queries) > searches:
            raise ValueError(f"{len(checked.queries)} queries and {len(checked.retrieved)} "
                             f"results; both must be equal and at most {searches}")
        if any(not q.strip() or len(q) > self.max_query_chars for q in checked.queries):
            raise ValueError(f"a query is empty or longer than {self.max_query_chars} characters")
        if any(len(ids) > self.max_topk for ids in checked.retrieved):
            raise ValueError(f"a search returned more than max_topk={self.max_topk} passages")

    def set_tool_state(self, state: Any) -> None:
        self.queries = [str(q) for q in state["queries"]]
        self.retrieved = [[str(i) for i in r] for r in state["retrieved"]]

    def copy_tool_state_to(self, clone: SearchEnv) -> None:  # type: ignore[override]
        clone.queries = list(self.queries)  # strings are immutable: a shallow copy is a copy
        clone.retrieved = [list(r) for r in self.retrieved]
