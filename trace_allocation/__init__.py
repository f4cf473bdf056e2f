"""TRACE rollout-budget allocation: pure numpy/torch, no knowledge of envs or LLM servers."""

from trace_allocation.budget import Budget, BudgetExceeded
from trace_allocation.prefix import allocate_prefixes, prefix_value, reproduce_probs
from trace_allocation.root import allocate_roots, root_value
from trace_allocation.tree import Node, Prefix, RolloutTree

__all__ = [
    "Budget",
    "BudgetExceeded",
    "Node",
    "Prefix",
    "RolloutTree",
    "allocate_prefixes",
    "allocate_roots",
    "prefix_value",
    "reproduce_probs",
    "root_value",
]
