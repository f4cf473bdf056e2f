"""Cheap CPU default predictor: hashed text features, logistic regression.

Trained by AdaGrad on the (soft) backup targets with the weighted cross-entropy: convex, fast on
sparse features and calibrated by construction, so it can be refit every step on thousands of
prefixes in milliseconds. Token hashes use crc32 (stable across processes, unlike `hash`).

Features: hashed unigrams and bigrams, plus every unigram crossed with a coarse *depth* bucket
(turns completed, read from the text by `depth_of`: by default the `TURN_MARK`s of the prefix
text, so a multi-line action or observation is still one turn). A value is "evidence so far scaled by the
turns left" (a martingale's Phi(X_t / sqrt(remaining))), so the weight a token deserves depends on
how deep the prefix is; a plain bag of words cannot express that, the depth-crossed copy can.
Each update also replays the last few updates' targets: the policy drifts slowly, so recent trees
are still nearly on-policy, and a prompt's identity tokens get more than one step to be learned.
"""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np

from trace_allocation.tree import turns_in

DEPTH_EDGES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)  # depth buckets: exact while short, coarser later


def count_turns(marker: str) -> Callable[[str], int]:
    """Depth = occurrences of another turn marker, for texts not built with `TURN_MARK` (e.g.
    a raw chat transcript: the assistant-turn header "<|im_start|>assistant")."""
    return lambda text: text.count(marker)


class LexicalPredictor:
    def __init__(
        self,
        n_features: int = 2**18,
        *,
        learning_rate: float = 0.2,
        l2: float = 1e-4,
        epochs: int = 1,
        batch_size: int = 256,
        depth_of: Callable[[str], int] | None = turns_in,
        replay: int = 3,
        normalize: bool = False,
        seed: int = 0,
    ) -> None:
        """`depth_of` gives the depth for the crossed features (None: plain bag of words);
        `replay` refits on the last `replay` earlier updates' targets too (0: this update only);
        `normalize` scales each text's features to norm 1. Off by default: AdaGrad's first step moves
        every feature by about `learning_rate`, so a text of n features moves its logit by about
        n x learning_rate (~16 for a 27-word prompt: confidently wrong on real prompts), and with
        it ~sqrt(n) x learning_rate; on recorded SmolLM2 outcomes that makes the root predictions
        calibrated, but in the simulator TRACE finds fewer mixed trees with it
        (docs/allocation_results.md, "A calibrated lexical model")."""
        if n_features & (n_features - 1):
            raise ValueError("n_features must be a power of two")
        self.n_features = n_features
        self.learning_rate = learning_rate
        self.l2 = l2
        self.epochs = epochs
        self.batch_size = batch_size
        self.depth_of = depth_of
        self.normalize = normalize
        self.weights = np.zeros(n_features)
        self.bias = 0.0
        self._squared_grads = np.zeros(n_features)
        self._bias_squared_grad = 0.0
        self._token_ids: dict[str, int] = {}
        self._history: deque[tuple[list[str], np.ndarray, np.ndarray]] = deque(maxlen=replay)
        self._rng = np.random.default_rng(seed)

    def state_dict(self) -> dict:
        """Everything an exact resume needs (arrays stay numpy; the rest is JSON-able)."""
        return {
            "weights": self.weights.copy(), "bias": self.bias,
            "squared_grads": self._squared_grads.copy(), "bias_squared_grad": self._bias_squared_grad,
            "history": [[list(t), y.copy(), w.copy()] for t, y, w in self._history],
            "rng": self._rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict) -> None:
        self.weights = np.array(state["weights"], dtype=float)
        self.bias = float(state["bias"])
        self._squared_grads = np.array(state["squared_grads"], dtype=float)
        self._bias_squared_grad = float(state["bias_squared_grad"])
        self._history.clear()
        for texts, y, w in state["history"]:
            self._history.append((list(texts), np.asarray(y, dtype=float), np.asarray(w, dtype=float)))
        self._rng.bit_generator.state = state["rng"]

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        if not len(texts):
            return np.zeros(0)
        index, row, value = self._features(texts)
        return _sigmoid(self._logits(index, row, value, len(texts)))

    def update(self, texts: Sequence[str], targets: np.ndarray, weights: np.ndarray | None = None) -> None:
        y = np.asarray(targets, dtype=float)
        w = np.ones(len(texts)) if weights is None else np.asarray(weights, dtype=float)
        if len(y) != len(texts) or len(w) != len(texts):
            raise ValueError("texts, targets and weights must align")
        if not len(texts):
            return
        w = w / w.mean()
        batch_texts, batch_y, batch_w = list(texts), y, w
        if self._history.maxlen:
            old = list(self._history)
            batch_texts = [t for o in old for t in o[0]] + batch_texts
            batch_y = np.concatenate([o[1] for o in old] + [y])
            batch_w = np.concatenate([o[2] for o in old] + [w])
            self._history.append((list(texts), y, w))
        index, row, value = self._features(batch_texts)
        starts = np.searchsorted(row, np.arange(len(batch_texts) + 1))
        n = len(batch_texts)
        for _ in range(self.epochs):
            for batch in np.array_split(self._rng.permutation(n), max(1, n // self.batch_size)):
                self._step(batch, index, value, starts, batch_y, batch_w)

    def _step(self, batch: np.ndarray, index: np.ndarray, value: np.ndarray, starts: np.ndarray,
              y: np.ndarray, w: np.ndarray) -> None:
        lengths = starts[batch + 1] - starts[batch]
        positions = np.repeat(starts[batch] - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
        local_row = np.repeat(np.arange(batch.size), lengths)
        idx, val = index[positions], value[positions]
        residual = w[batch] * (_sigmoid(self._logits(idx, local_row, val, batch.size)) - y[batch])
        used, inverse = np.unique(idx, return_inverse=True)
        grad = np.bincount(inverse, weights=residual[local_row] * val, minlength=used.size)
        grad += self.l2 * self.weights[used]
        self._squared_grads[used] += grad**2
        self.weights[used] -= self.learning_rate * grad / (np.sqrt(self._squared_grads[used]) + 1e-8)
        bias_grad = float(residual.sum())
        self._bias_squared_grad += bias_grad**2
        self.bias -= self.learning_rate * bias_grad / (np.sqrt(self._bias_squared_grad) + 1e-8)

    def _logits(self, index: np.ndarray, row: np.ndarray, value: np.ndarray, n: int) -> np.ndarray:
        return np.bincount(row, weights=self.weights[index] * value, minlength=n) + self.bias

    def _ids(self, keys: list[str]) -> np.ndarray:
        ids = self._token_ids
        for key in set(keys).difference(ids):
            ids[key] = zlib.crc32(key.encode())
        return np.fromiter(map(ids.__getitem__, keys), dtype=np.int64, count=len(keys))

    def _features(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Hashed feature index per occurrence, the text row it belongs to (sorted by row) and its
        value: 1, or with `normalize` 1/sqrt(the row's occurrences), so every text has norm 1."""
        mask = self.n_features - 1
        tokens_per_text = [t.split() for t in texts]
        unigram = self._ids([tok for toks in tokens_per_text for tok in toks])
        row = np.repeat(np.arange(len(texts)), [len(toks) for toks in tokens_per_text])
        same_text = row[1:] == row[:-1]
        bigram = unigram[:-1][same_text] * 1_000_003 + unigram[1:][same_text] * 7 + 12_345
        parts, rows = [unigram, bigram], [row, row[:-1][same_text]]
        if self.depth_of is not None:
            bucket = np.searchsorted(DEPTH_EDGES, [self.depth_of(t) for t in texts], side="right") + 1
            parts.append(unigram * 2_654_435_761 + bucket[row] * 40_503)
            rows.append(row)
        index, row = np.concatenate(parts) & mask, np.concatenate(rows)
        order = np.argsort(row, kind="stable")
        index, row = index[order], row[order]
        if not self.normalize:
            return index, row, np.ones(index.size)
        counts = np.bincount(row, minlength=len(texts))
        return index, row, 1.0 / np.sqrt(np.maximum(counts, 1))[row]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))
