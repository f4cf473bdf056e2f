"""A micro-batch of token rows packed into one sequence: every shared prefix computed once.

Rows of a TRACE step share far more than one common prefix: every row starts with the system
prompt, the rows of one tree share their task, and a continuation shares its parent's transcript
up to its branch point. The prefix-once forward (`trace_agents.train.forward`) saves only what
*all* rows share. Packing saves every shared prefix: the rows' tokens go into a trie (each
distinct prefix once), the trie is laid out depth-first as one sequence, each token attends to its
ancestors only (a tree attention mask) and sits at the position of its depth, so one forward gives
each row's log-probabilities as the padded forward would: the same function of the weights,
gradients included. The price is attention over the packed length (dense, ``nodes x nodes``),
which `layout_flops` weighs against the work saved.

Needs an attention implementation that takes a custom 4-D mask (``sdpa``: boolean; ``eager``:
additive); others (flash attention, flex) fall back to the padded forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PACKABLE = ("sdpa", "eager")
"""Attention implementations that honour a custom 4-D mask (transformers passes it as-is)."""


@dataclass
class Packed:
    """One micro-batch as a trie laid out depth-first."""

    tokens: torch.Tensor
    """``[nodes]`` token id of each trie node."""
    parent: torch.Tensor
    """``[nodes]`` index of each node's parent (-1 for a first token); parents come first."""
    depth: torch.Tensor
    """``[nodes]`` position of each node in its rows (0 for a first token)."""
    index: torch.Tensor
    """``[rows, width]`` the node of each row's token (0 past a row's end)."""

    @property
    def nodes(self) -> int:
        return int(self.tokens.shape[0])

    def ancestors(self) -> torch.Tensor:
        """``[nodes, nodes]`` boolean: ``out[q, k]`` iff node k is node q or one of its ancestors."""
        n = self.nodes
        allowed = torch.eye(n, dtype=torch.bool)
        for q in range(n):  # parents come first, so their rows are complete
            p = int(self.parent[q])
            if p >= 0:
                allowed[q] |= allowed[p]
        return allowed


def pack(tokens: torch.Tensor, attention: torch.Tensor) -> Packed:
    """The trie of a right-padded batch's rows (``attention`` marks each row's real tokens)."""
    children: list[dict[int, int]] = [{}]  # node 0 is a virtual root, dropped below
    ids: list[int] = [-1]
    parents: list[int] = [-1]
    depths: list[int] = [-1]
    lengths = attention.sum(-1).tolist()
    index = [[0] * tokens.shape[1] for _ in range(tokens.shape[0])]
    for r, row in enumerate(tokens.tolist()):
        node = 0
        for t in range(int(lengths[r])):
            nxt = children[node].get(row[t])
            if nxt is None:
                nxt = len(ids)
                children[node][row[t]] = nxt
                children.append({})
                ids.append(row[t])
                parents.append(node)
                depths.append(t)
            node = nxt
            index[r][t] = node - 1
    # nodes are numbered in creation order: a parent is always created before its children
    return Packed(torch.tensor(ids[1:], dtype=torch.long), torch.tensor(parents[1:], dtype=torch.long) - 1,
                  torch.tensor(depths[1:], dtype=torch.long), torch.tensor(index, dtype=torch.long))


def packed_logprobs(model: torch.nn.Module, tokens: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """``out[:, t] = log p(tokens[:, t] | tokens[:, :t])`` (0 at t = 0 and past a row's end), the
    padded forward's result, from one forward of the packed trie."""
    device = next(model.parameters()).device
    packed = pack(tokens.cpu(), attention.cpu())
    allowed = packed.ancestors().to(device)
    impl = model.config._attn_implementation
    if impl == "sdpa":
        mask = allowed[None, None]
    else:  # eager adds the mask to the scores
        dtype = next(model.parameters()).dtype
        if torch.is_autocast_enabled(device.type):
            dtype = torch.get_autocast_dtype(device.type)
        mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
        mask.masked_fill_(~allowed, torch.finfo(dtype).min)
        mask = mask[None, None]
    logits = model(input_ids=packed.tokens[None].to(device), attention_mask=mask,
                   position_ids=packed.depth[None].to(device)).logits[0]
    logp = torch.log_softmax(logits.float(), dim=-1)
    rows, width = tokens.shape
    out = torch.zeros((rows, width), dtype=logp.dtype, device=device)
    index = packed.index.to(device)
    nxt = tokens.to(device)[:, 1:]
    picked = logp[index[:, :-1]].gather(-1, nxt[..., None])[..., 0]  # node of t-1 predicts token t
    valid = attention.to(device)[:, 1:].bool()
    out[:, 1:] = torch.where(valid, picked, torch.zeros_like(picked))
    return out


def can_pack(model: torch.nn.Module) -> bool:
    """Whether the model's attention takes the tree mask (else the caller pads)."""
    return getattr(model.config, "_attn_implementation", None) in PACKABLE


__all__ = ["PACKABLE", "Packed", "can_pack", "pack", "packed_logprobs"]
