"""QA answer metrics with the standard SQuAD / HotpotQA normalisation.

Exact match and token F1 follow the official HotpotQA evaluation script: lowercase, drop
punctuation, the articles a/an/the and extra whitespace; F1 is 0 when either side is a bare
yes/no/noanswer that the other side does not match exactly (so "yes" never gets partial credit).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)
_SPECIAL = {"yes", "no", "noanswer"}


def normalize_answer(text: str) -> str:
    text = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction), normalize_answer(gold)
    if (pred in _SPECIAL or ref in _SPECIAL) and pred != ref:
        return 0.0
    pred_tokens, ref_tokens = pred.split(), ref.split()
    common = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def best_em_f1(prediction: str, golds: Iterable[str]) -> tuple[float, float]:
    """The best EM and the best F1 over every gold answer (aliases count as gold)."""
    golds = list(golds)
    if not golds:
        return 0.0, 0.0
    return (max(exact_match(prediction, g) for g in golds),
            max(token_f1(prediction, g) for g in golds))
