"""Rollouts that grow trees: many ReAct episodes at once, every turn boundary remembered, and
continuations branched from any turn with the exact env state and token prefix.

Each tree node (``trace_allocation.tree.Node``) is one turn; its ``handle`` is a :class:`Turn`
(the root's is a :class:`Start`) holding the env snapshot after the turn and the turn's own token
segments: the model's action tokens (trainable, with their log-probabilities) and the tokens the
env and chat template add after them (masked). The token prefix of a node is the concatenation of
the segments on its path, so a continuation sends the server the very ids its parent saw and the
server's prefix cache (SGLang RadixAttention, vLLM prefix caching) serves them.

Episodes are played by the one episode loop, :func:`trace_agents.episode.play` (verl's agent loop
plays the same), with the backend's ``generate``; this module turns its turns into nodes. Failures
never lose a rollout: an exception in generation (after the backend's retries), parsing or an env
step, or an engine abort, ends the episode as ``failed`` (kept, with the error, its completed turns
in the tree without a reward).

Env steps never run on the event loop: ``env.astep`` runs a synchronous env's ``step`` in the
runner's bounded worker pool, and envs whose tools do I/O await it there (the search env's HTTP
retriever), so one slow tool call delays only its own episode; a step that outlives
``step_timeout_s`` fails its episode. Each tree draws its episodes' sampling seeds from its own
generator (seeded when the tree is made), so the same seeds give the same trees whatever order
concurrent episodes finish in.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from trace_agents.backends.base import Backend, Completion, Prompt, SamplingParams
from trace_agents.dialects import Dialect, MessagesDialect, NativeToolsDialect, make_dialect
from trace_agents.episode import Episode as Played
from trace_agents.episode import Limits, Turn, play
from trace_agents.react import Message, turn_text
from trace_allocation.tree import Node, RolloutTree, prefix_text
from trace_envs import Snapshot, ToolEnv


@dataclass(frozen=True)
class Start:
    """Handle of a root: the env and task, the first messages and prompt tokens, the reset state."""

    env: ToolEnv
    """An env of the right class and suite: forks of it are restored to resume any node."""
    task_id: str
    prompt: str
    messages: tuple[Message, ...]
    prompt_ids: tuple[int, ...]
    snapshot: Snapshot
    rng: np.random.Generator
    """Draws the sampling seed of every episode of this tree, in the order rollouts are asked for."""
    dialect: Dialect
    """How the tree's model is prompted and parsed (chat-message backends: ``MessagesDialect``,
    or ``NativeToolsDialect`` where the server parses tool calls itself)."""
    tools: tuple[dict[str, Any], ...]
    """The env's tool schemas at the start: what a server with native tool calling is offered."""


@dataclass(kw_only=True)
class Episode(Played):
    """One rollout (bare or continuation) and where it sits in its tree; its turns are the nodes
    below ``start`` down to ``leaf`` (None when it played none)."""

    tree: RolloutTree
    start: Node
    """The node it was resumed from (the root for a bare rollout)."""
    continuation: bool
    leaf: Node | None = None


@dataclass(frozen=True)
class TokenPath:
    """Token view of a root-to-node path, for the trainer."""

    ids: list[int]
    loss_mask: list[int]
    """1 on the model's tokens, 0 on prompt, template and observation tokens."""
    logprobs: list[float | None]
    """Sampling log-probability of each model token (None elsewhere or when not reported)."""
    depth: list[int]
    """Turn each token belongs to (0 = prompt): pick the turns a sample trains."""
    version: list[int]
    """Policy version that generated each model token (``Turn.policy_version``; 0 elsewhere)."""


def start_of(node: Node) -> Start:
    root = node.path()[0]
    assert isinstance(root.handle, Start), "not a rollout tree grown by this module"
    return root.handle


def token_path(node: Node) -> TokenPath:
    """Ids, loss mask, log-probs and turn index of every token from the prompt to ``node``."""
    start = start_of(node)
    n_prompt = len(start.prompt_ids)
    ids, mask, depth = list(start.prompt_ids), [0] * n_prompt, [0] * n_prompt
    lps: list[float | None] = [None] * n_prompt
    version = [0] * n_prompt
    for t, n in enumerate(node.path()[1:], start=1):
        turn: Turn = n.handle
        ids += turn.action_ids
        mask += [1] * len(turn.action_ids)
        lps += turn.action_logprobs or [None] * len(turn.action_ids)  # type: ignore[operator]
        ids += turn.env_ids
        mask += [0] * len(turn.env_ids)
        lps += [None] * len(turn.env_ids)
        depth += [t] * (len(turn.action_ids) + len(turn.env_ids))
        version += [turn.policy_version] * len(turn.action_ids) + [0] * len(turn.env_ids)
    return TokenPath(ids, mask, lps, depth, version)


def prefix_ids(node: Node) -> list[int]:
    """The exact token prefix a continuation from ``node`` sends to the server."""
    return token_path(node).ids


def prefix_messages(node: Node) -> list[Message]:
    """The path as chat messages, in the tree's dialect (tool calls and tool messages when it
    has them); the template's rendering of these is the token prefix, model tokens aside."""
    start = start_of(node)
    messages = list(start.messages)
    for n in node.path()[1:]:
        messages += start.dialect.turn_messages(n.handle.env_action, n.handle.observation, n.handle.info)
    return messages


def _prompt(node: Node) -> Prompt:
    """What a continuation from ``node`` generates from, in the tree's dialect: the exact token
    prefix, or (chat messages) the conversation."""
    start = start_of(node)
    turns = [n.handle for n in node.path()[1:]]
    opening = start.dialect.prompt(start.prompt_ids, start.messages, start.tools)
    return functools.reduce(start.dialect.extend, turns, opening)


def transcript(node: Node) -> str:
    """The prefix H_t as plain text for the predictor: the task, then each turn's action and
    observation after a ``TURN_MARK`` (so predictors count turns, not lines)."""
    turns = [turn_text(n.handle.action, n.handle.observation, n.handle.observation_role)
             for n in node.path()[1:]]
    return prefix_text(start_of(node).prompt, turns)


def resume_env(node: Node) -> ToolEnv:
    """A new env at exactly the node's turn (the root: the reset state): a fork of the tree's env
    restored from the node's snapshot."""
    start = start_of(node)
    env = start.env.fork()
    env.restore(node.handle.snapshot)
    return env


class RolloutRunner:
    """Runs ReAct episodes against a backend and records them into rollout trees."""

    def __init__(
        self,
        backend: Backend,
        *,
        tokenizer: Any = None,
        sampling: SamplingParams = SamplingParams(max_tokens=256),
        max_concurrency: int = 64,
        max_context_tokens: int | None = None,
        seed: int = 0,
        env_workers: int = 8,
        step_timeout_s: float | None = 120.0,
        episode_timeout_s: float | None = None,
        dialect: str | Dialect = "auto",
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if backend.accepts_token_ids and tokenizer is None:
            raise ValueError("token-level rollouts need the model's tokenizer")
        self.backend = backend
        self.dialect: Dialect = (
            make_dialect(tokenizer, dialect, chat_template_kwargs) if backend.accepts_token_ids
            else _chat_dialect(backend, dialect)
        )
        """The model family's dialect (``auto``: from the chat template); chat-message backends
        speak the react format in messages, or the server's own tool calling."""
        self.sampling = replace(
            sampling, stop=tuple(dict.fromkeys(sampling.stop + self.dialect.stop)),
            stop_token_ids=tuple(dict.fromkeys((*sampling.stop_token_ids, *sorted(self.dialect.stop_ids)))),
        )
        """The turn ends at the dialect's stop strings and end-of-turn tokens on every engine."""
        self.max_context_tokens = max_context_tokens
        self.policy_version = 0
        """Updates applied to the weights the backend samples with (the training loop sets it
        after each weight sync); stamped on every turn as its ``policy_version``."""
        self._slots = asyncio.Semaphore(max_concurrency)
        self.env_pool = concurrent.futures.ThreadPoolExecutor(env_workers, thread_name_prefix="env-step")
        """Runs synchronous env steps off the event loop (at most ``env_workers`` at once)."""
        self.step_timeout_s = step_timeout_s
        """Deadline of one env step; a step past it fails its episode (its thread is abandoned)."""
        self.episode_timeout_s = episode_timeout_s
        """Deadline of a whole episode (generations included); past it the episode fails."""
        self.rng = np.random.default_rng(seed)
        """Draws each episode's sampling seed: part of a training checkpoint."""
        self.stats = {"episodes": 0, "failed": 0, "turns": 0, "generated_tokens": 0,
                      "prompt_tokens": 0, "cached_tokens": 0}

    def new_tree(self, env: ToolEnv, task_id: str, *, seed: int | None = None) -> RolloutTree:
        """Reset ``env`` on the task and make the tree's root. A fork of the reset env is kept as
        the template every node of the tree resumes from, so ``env`` stays free for other trees."""
        prompt, _ = env.reset(seed=seed, options={"task_id": task_id})
        messages = self.dialect.initial_messages(env, prompt)
        ids = self.dialect.initial_ids(env, prompt)
        rng = np.random.default_rng(int(self.rng.integers(2**62)))
        start = Start(env.fork(), task_id, prompt, tuple(messages), tuple(ids), env.snapshot(),
                      rng, self.dialect, tuple(env.tool_schemas()))
        return RolloutTree(task_id, prompt, handle=start)

    def prompt_ids(self, env: ToolEnv, task_id: str) -> list[int]:
        """The token ids a tree of this task starts from (``env`` is reset on it, as by `new_tree`)."""
        prompt, _ = env.reset(options={"task_id": task_id})
        return list(self.dialect.initial_ids(env, prompt))

    async def rollouts(self, tree: RolloutTree, node: Node, k: int, *,
                       on_episode: Callable[[Episode], None] | None = None) -> list[Episode]:
        """``k`` episodes resumed from ``node``: bare rollouts from the root, continuations from
        any other node (attached there as new children); ``on_episode`` is called as each ends
        (progress bars)."""
        if isinstance(node.handle, Turn) and (node.handle.terminated or node.handle.truncated):
            raise ValueError("cannot continue from a node that ended its episode")
        seeds = start_of(node).rng.integers(0, 2**62, size=k).tolist()
        episodes = list(await asyncio.gather(*(self._episode(tree, node, s, on_episode) for s in seeds)))
        # children in episode order, not in the order concurrent episodes finished their first turn
        depth = len(node.path())
        firsts = [e.leaf.path()[depth] for e in episodes if e.leaf is not None]
        ids = {id(c) for c in firsts}
        node.children[:] = [c for c in node.children if id(c) not in ids] + firsts
        return episodes

    async def _episode(self, tree: RolloutTree, start: Node, seed: int,
                       on_episode: Callable[[Episode], None] | None) -> Episode:
        """Play one episode through :func:`trace_agents.episode.play`, then hang its turns below
        ``start`` (a failed one's completed turns too, without a reward)."""
        limits = Limits(self.sampling.max_tokens, context_tokens=self.max_context_tokens,
                        step_timeout_s=self.step_timeout_s, episode_timeout_s=self.episode_timeout_s)
        generate = functools.partial(self._generate, seed)
        async with self._slots:
            played = await play(generate, start_of(start).dialect, resume_env(start), _prompt(start),
                                limits=limits, context=len(prefix_ids(start)), pool=self.env_pool)
        episode = Episode(**vars(played), tree=tree, start=start, continuation=start.parent is not None)
        node = start
        for turn in episode.turns:
            node = node.add_child("", handle=turn, continuation=node is start and episode.continuation)
            node.text = functools.partial(transcript, node)  # rendered only if a predictor asks
        if node is not start:
            episode.leaf = node
            if episode.status in ("terminated", "truncated"):
                node.finish(episode.reward)  # type: ignore[arg-type]  (a played turn: never None)
        self._account(episode)
        if on_episode is not None:
            on_episode(episode)
        return episode

    async def _generate(self, seed: int, prompt: Prompt, max_tokens: int, turn: int) -> Completion:
        """The backend's generation, seeded per episode and turn, stamped with the policy version
        it started under."""
        version = self.policy_version
        out = await self.backend.generate(prompt, replace(self.sampling, max_tokens=max_tokens,
                                                          seed=(seed + turn) % 2**63))
        return replace(out, meta={**out.meta, "policy_version": version})

    def _account(self, episode: Episode) -> None:
        s = self.stats
        s["episodes"] += 1
        s["failed"] += episode.status == "failed"
        s["turns"] += len(episode.turns)
        s["generated_tokens"] += episode.generated_tokens
        s["prompt_tokens"] += episode.prompt_tokens
        s["cached_tokens"] += episode.cached_tokens


def _chat_dialect(backend: Backend, dialect: str | Dialect) -> Dialect:
    """The dialect of a backend that takes chat messages: its server's native tool calling, or
    the react format in messages."""
    if backend.native_tools:
        if isinstance(dialect, NativeToolsDialect):
            return dialect
        if dialect not in ("auto", "native"):
            raise ValueError("this server parses tool calls itself (native tool calling): use dialect 'auto'")
        return NativeToolsDialect()
    if dialect not in ("auto", "react"):
        raise ValueError("chat-message backends speak the react dialect; a family's dialect "
                         "needs token-id prompts (SGLang /generate, /v1/completions, HF)")
    return MessagesDialect()


def episodes_summary(episodes: Sequence[Episode]) -> dict[str, float]:
    done = [e for e in episodes if e.status != "failed"]
    rewards = [e.reward for e in done if e.reward is not None]
    return {
        "episodes": len(episodes),
        "failed": len(episodes) - len(done),
        "reward_mean": float(np.mean(rewards)) if rewards else 0.0,
        "turns": sum(len(e.turns) for e in episodes),
        "generated_tokens": sum(e.generated_tokens for e in episodes),
        "prompt_tokens": sum(e.prompt_tokens for e in episodes),
        "cached_tokens": sum(e.cached_tokens for e in episodes),
    }
