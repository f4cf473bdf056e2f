"""Generated multi-step arithmetic word problems with exact integer answers.

A problem follows one quantity through ``steps`` operations (buy, give away, multiply, share
equally) on operands of ``digits`` digits. Numbers of 3+ digits and a chain of dependent steps
make mental arithmetic unreliable for small models, so the calculator tool matters.
Everything is a pure function of ``(seed, index)``: the same call gives the same problems on
every machine.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

NAMES = ("Ava", "Ben", "Chloe", "Diego", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jonas",
         "Kira", "Liam", "Maya", "Noah", "Olga", "Priya")
ITEMS = ("apples", "books", "coins", "marbles", "stamps", "shells", "bricks", "cards",
         "pencils", "tickets", "bottles", "seeds")

_ADD = ("Then {n} buys {b} more {u}.", "A friend gives {n} another {b} {u}.",
        "{n} finds {b} more {u}.")
_SUB = ("{n} gives away {b} {u}.", "{n} sells {b} of the {u}.", "{n} loses {b} {u}.")
_MUL = ("{n} ends up with {b} times as many {u} as before.",
        "The number of {u} is multiplied by {b}.")
_DIV = ("{n} splits the {u} into {b} equal groups and keeps one group.",
        "{n} shares the {u} equally with {c} friends, so {b} people get the same number, "
        "and keeps one share.")


@dataclass(frozen=True)
class WordProblem:
    id: str
    text: str
    answer: int
    expression: str


def _operand(rng: random.Random, digits: int) -> int:
    return rng.randint(10 ** (digits - 1), 10**digits - 1)


def _divisor(rng: random.Random, value: int, digits: int) -> int | None:
    """A divisor of ``value`` with up to ``digits`` digits (at least 2), if there is one."""
    limit = min(10**digits - 1, value // 2)
    candidates = [d for d in range(2, min(limit, 5000) + 1) if value % d == 0]
    return rng.choice(candidates) if candidates else None


def make_problem(index: int, *, steps: int, digits: int, seed: int) -> WordProblem:
    rng = random.Random(f"{seed}:{steps}:{digits}:{index}")
    name, unit = rng.choice(NAMES), rng.choice(ITEMS)
    value = _operand(rng, digits + 1)
    sentences = [f"{name} has {value} {unit}."]
    expression = str(value)
    mul_digits = max(1, digits - 1)  # keep products readable
    for _ in range(steps):
        op = rng.choice("+-*/")
        if op == "/":
            b = _divisor(rng, value, digits)
            if b is None:
                op = "+"
        if op == "+":
            b = _operand(rng, digits)
            value, template = value + b, rng.choice(_ADD)
        elif op == "-":
            b = rng.randint(1, max(1, min(value - 1, 10**digits - 1)))
            value, template = value - b, rng.choice(_SUB)
        elif op == "*":
            b = rng.randint(2, max(2, 10**mul_digits - 1))
            value, template = value * b, rng.choice(_MUL)
        else:
            assert b is not None
            value, template = value // b, rng.choice(_DIV)
        sentences.append(template.format(n=name, b=b, c=b - 1, u=unit))
        expression = f"({expression} {op} {b})"
    sentences.append(f"How many {unit} does {name} have now?")
    return WordProblem(f"arith-s{steps}d{digits}-{seed}-{index}", " ".join(sentences), value,
                       expression[1:-1] if steps else expression)


def generate_word_problems(
    size: int, *, steps: int = 2, digits: int = 3, seed: int = 0
) -> list[WordProblem]:
    if size < 1 or steps < 1 or digits < 1:
        raise ValueError("size, steps and digits must all be at least 1")
    return [make_problem(i, steps=steps, digits=digits, seed=seed) for i in range(size)]
