"""Cheap CPU default predictor: hashed unigrams + bigrams, logistic regression.

Trained by AdaGrad on the (soft) backup targets with the weighted cross-entropy: convex, fast on
sparse features and calibrated by construction, so it can be refit every step on thousands of
prefixes in milliseconds. Token hashes use crc32 (stable across processes, unlike `hash`).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np


class LexicalPredictor:
    def __init__(
        self,
        n_features: int = 2**18,
        *,
        learning_rate: float = 0.3,
        l2: float = 1e-4,
        epochs: int = 1,
        batch_size: int = 256,
        seed: int = 0,
    ) -> None:
        if n_features & (n_features - 1):
            raise ValueError("n_features must be a power of two")
        self.n_features = n_features
        self.learning_rate = learning_rate
        self.l2 = l2
        self.epochs = epochs
        self.batch_size = batch_size
        self.weights = np.zeros(n_features)
        self.bias = 0.0
        self._squared_grads = np.zeros(n_features)
        self._bias_squared_grad = 0.0
        self._token_ids: dict[str, int] = {}
        self._rng = np.random.default_rng(seed)

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        if not len(texts):
            return np.zeros(0)
        index, row = self._features(texts)
        return _sigmoid(self._logits(index, row, len(texts)))

    def update(self, texts: Sequence[str], targets: np.ndarray, weights: np.ndarray | None = None) -> None:
        y = np.asarray(targets, dtype=float)
        w = np.ones(len(texts)) if weights is None else np.asarray(weights, dtype=float)
        if len(y) != len(texts) or len(w) != len(texts):
            raise ValueError("texts, targets and weights must align")
        if not len(texts):
            return
        w = w / w.mean()
        index, row = self._features(texts)
        starts = np.searchsorted(row, np.arange(len(texts) + 1))
        for _ in range(self.epochs):
            for batch in np.array_split(self._rng.permutation(len(texts)), max(1, len(texts) // self.batch_size)):
                self._step(batch, index, starts, y, w)

    def _step(self, batch: np.ndarray, index: np.ndarray, starts: np.ndarray, y: np.ndarray, w: np.ndarray) -> None:
        lengths = starts[batch + 1] - starts[batch]
        positions = np.repeat(starts[batch] - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
        local_row = np.repeat(np.arange(batch.size), lengths)
        idx = index[positions]
        residual = w[batch] * (_sigmoid(self._logits(idx, local_row, batch.size)) - y[batch])
        used, inverse = np.unique(idx, return_inverse=True)
        grad = np.bincount(inverse, weights=residual[local_row], minlength=used.size) + self.l2 * self.weights[used]
        self._squared_grads[used] += grad**2
        self.weights[used] -= self.learning_rate * grad / (np.sqrt(self._squared_grads[used]) + 1e-8)
        bias_grad = float(residual.sum())
        self._bias_squared_grad += bias_grad**2
        self.bias -= self.learning_rate * bias_grad / (np.sqrt(self._bias_squared_grad) + 1e-8)

    def _logits(self, index: np.ndarray, row: np.ndarray, n: int) -> np.ndarray:
        return np.bincount(row, weights=self.weights[index], minlength=n) + self.bias

    def _features(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Hashed feature index per occurrence and the text row it belongs to (sorted by row)."""
        tokens_per_text = [t.split() for t in texts]
        flat = [tok for toks in tokens_per_text for tok in toks]
        ids = self._token_ids
        for tok in set(flat).difference(ids):
            ids[tok] = zlib.crc32(tok.encode()) & (self.n_features - 1)
        unigram = np.fromiter(map(ids.__getitem__, flat), dtype=np.int64, count=len(flat))
        row = np.repeat(np.arange(len(texts)), [len(toks) for toks in tokens_per_text])
        same_text = row[1:] == row[:-1]
        bigram = (unigram[:-1][same_text] * 1_000_003 + unigram[1:][same_text] * 7 + 12_345) & (self.n_features - 1)
        index = np.concatenate([unigram, bigram])
        rows = np.concatenate([row, row[:-1][same_text]])
        order = np.argsort(rows, kind="stable")
        return index[order], rows[order]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))
