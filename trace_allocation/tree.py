"""Rollout trees: nodes are turns, leaves carry rewards, backup gives the predictor's targets.

The agent layer grows the tree (bare rollouts from the root, continuations branched from chosen
prefixes) and keeps whatever it needs to resume a prefix in the opaque `handle` (env snapshot,
token ids); allocation only reads texts, rewards and the tree shape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Text = str | Callable[[], str]

TURN_MARK = "\n<turn> "
"""Opens every turn of a prefix text: H_t = prompt + t x (TURN_MARK + turn). Predictors count
turns and find the prompt by it, whatever the number of lines in a prompt, action or observation."""


def prefix_text(prompt: str, turns: Iterable[str]) -> str:
    """The text of a prefix: the prompt, then each completed turn after a `TURN_MARK`."""
    return prompt + "".join(TURN_MARK + turn for turn in turns)


def turns_in(text: str) -> int:
    """Turns completed in a prefix text (its depth)."""
    return text.count(TURN_MARK)


def prompt_of(text: str) -> str:
    """The prompt a prefix text starts with."""
    return text.split(TURN_MARK, 1)[0]


@dataclass(eq=False)
class Node:
    """One turn. `text` renders the whole prefix H_t (prompt + turns so far); it may be a callable
    so long histories are only rendered when a predictor needs them.

    `bare` is True on the root and along rollouts started from the root; a continuation and all
    nodes below it are not bare. `visits` (terminal leaves below) and `target` (their mean reward,
    the backup target V-hat) are filled by `RolloutTree.backup()`.
    """

    text: Text
    parent: Node | None = None
    handle: Any = None
    reward: float | None = None
    bare: bool = True
    children: list[Node] = field(default_factory=list)
    visits: int = 0
    target: float | None = None

    @property
    def depth(self) -> int:
        """Turns completed in this prefix (0 at the root)."""
        return 0 if self.parent is None else self.parent.depth + 1

    @property
    def is_leaf(self) -> bool:
        return not self.children

    @property
    def prefix_text(self) -> str:
        return self.text() if callable(self.text) else self.text

    def add_child(self, text: Text, handle: Any = None, *, continuation: bool = False) -> Node:
        """Append the next turn; `continuation=True` marks the first turn of a branched rollout."""
        child = Node(text=text, parent=self, handle=handle, bare=self.bare and not continuation)
        self.children.append(child)
        return child

    def finish(self, reward: float) -> Node:
        """Mark this node terminal with its verifiable reward."""
        if self.children:
            raise ValueError("only a leaf can carry a reward")
        self.reward = float(reward)
        return self

    def path(self) -> list[Node]:
        """Nodes from the root down to this one."""
        nodes: list[Node] = []
        node: Node | None = self
        while node is not None:
            nodes.append(node)
            node = node.parent
        return nodes[::-1]


@dataclass(frozen=True)
class Prefix:
    """A Stage 2 candidate: an intermediate node of a bare rollout and that rollout's reward."""

    node: Node
    reward: float


class RolloutTree:
    def __init__(self, prompt_id: Any, prompt_text: Text, handle: Any = None) -> None:
        self.prompt_id = prompt_id
        self.root = Node(text=prompt_text, handle=handle)

    def nodes(self) -> Iterator[Node]:
        """All nodes, parents before children."""
        stack = [self.root]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children))

    def leaves(self) -> Iterator[Node]:
        return (n for n in self.nodes() if n.is_leaf and n is not self.root)

    def rewards(self) -> list[float]:
        return [n.reward for n in self.leaves() if n.reward is not None]

    @property
    def bare_rollouts(self) -> int:
        return sum(1 for n in self.leaves() if n.bare)

    @property
    def is_mixed(self) -> bool:
        """At least one success and one failure among the terminal leaves (a useful group)."""
        rewards = self.rewards()
        return bool(rewards) and max(rewards) > min(rewards)

    def backup(self) -> None:
        """Set `visits` and `target` (empirical success of the terminal leaves below) bottom-up.

        Leaves without a reward (truncated rollouts) count for nothing; a node with no terminal
        leaf below keeps target None.
        """
        order = list(self.nodes())
        totals: dict[int, float] = {}
        for node in reversed(order):
            if node.is_leaf:
                node.visits = int(node.reward is not None)
                total = node.reward or 0.0
            else:
                node.visits = sum(c.visits for c in node.children)
                total = sum(totals[id(c)] for c in node.children)
            totals[id(node)] = total
            node.target = total / node.visits if node.visits else None

    def prefix_candidates(self, *, include_final: bool = True) -> list[Prefix]:
        """Non-terminal prefixes (depth >= 1) of the bare rollouts, with that rollout's reward.

        `include_final=False` drops the prefix right before the final turn (reconstructed option
        in TRACE_METHOD.md). Bare rollouts without a reward contribute nothing.
        """
        found: list[Prefix] = []
        for leaf in self.leaves():
            if not leaf.bare or leaf.reward is None:
                continue
            last = leaf.depth - (1 if include_final else 2)
            found.extend(Prefix(n, leaf.reward) for n in leaf.path()[1 : last + 1])
        return found


def backup_targets(
    trees: Iterable[RolloutTree], *, include_leaves: bool = False
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The shared predictor's training set from a step's trees: every node's prefix text, its
    backup target V-hat and its weight (the terminal leaves below it). Leaves, whose text already
    holds the outcome, are left out unless ``include_leaves``."""
    texts: list[str] = []
    targets: list[float] = []
    weights: list[float] = []
    for tree in trees:
        tree.backup()
        for node in tree.nodes():
            if node.target is not None and (include_leaves or not node.is_leaf):
                texts.append(node.prefix_text)
                targets.append(node.target)
                weights.append(node.visits)
    return texts, np.asarray(targets, dtype=float), np.asarray(weights, dtype=float)
