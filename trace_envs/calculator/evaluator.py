"""A safe arithmetic evaluator: a whitelist over Python's AST, with every cost bounded up front.

Why not a library: `simpleeval` and `numexpr` either allow attribute access and comprehensions
or lack exact fractions and cost bounds; a model-facing calculator needs both. Nothing here ever
calls ``eval``: the expression is parsed to an AST and only numbers, arithmetic operators, a fixed
set of functions and named constants are interpreted.

Numbers stay exact while they can: integers are unbounded up to ``MAX_INT_BITS``, ``/`` between
exact numbers gives a ``Fraction``, and floats appear only from float literals or transcendental
functions. ``^`` means power, as people write it, and ``×``, ``÷``, ``−`` are accepted.
"""

from __future__ import annotations

import ast
import decimal
import math
import operator
from collections.abc import Callable, Mapping
from fractions import Fraction
from numbers import Rational

from trace_envs.model_source import parse_expression

Number = int | Fraction | float

MAX_CHARS = 2_000
MAX_NODES = 400
MAX_DEPTH = 60
MAX_INT_BITS = 10_000
MAX_FACTORIAL = 1_000

_TRANSLATE = str.maketrans({"×": "*", "÷": "/", "−": "-", "·": "*", "^": "**"})


class CalculatorError(ValueError):
    """The expression is invalid or too expensive; the message is written for the model."""


def _bits(x: Number) -> int:
    if isinstance(x, int):
        return x.bit_length()
    if isinstance(x, Fraction):
        return max(x.numerator.bit_length(), x.denominator.bit_length())
    return 0


def normalize(x: Number) -> Number:
    """``x`` in canonical form (bools and whole fractions as ints); refuses non-finite or
    oversized numbers with :class:`CalculatorError`."""
    if isinstance(x, bool):
        return int(x)
    if isinstance(x, Fraction) and x.denominator == 1:
        return x.numerator
    if isinstance(x, float) and not math.isfinite(x):
        raise CalculatorError("result is not a finite number")
    if _bits(x) > MAX_INT_BITS:
        raise CalculatorError(f"result exceeds {MAX_INT_BITS} bits")
    return x


def _as_int(x: Number, what: str) -> int:
    if isinstance(x, int):
        return x
    if isinstance(x, Fraction) and x.denominator == 1:
        return x.numerator
    if isinstance(x, float) and x.is_integer():
        return int(x)
    raise CalculatorError(f"{what} needs an integer, got {format_number(x)}")


def _divide(a: Number, b: Number) -> Number:
    if b == 0:
        raise CalculatorError("division by zero")
    if isinstance(a, float) or isinstance(b, float):
        return a / b
    return Fraction(a) / Fraction(b)


def _floordiv(a: Number, b: Number) -> Number:
    if b == 0:
        raise CalculatorError("division by zero")
    return a // b


def _mod(a: Number, b: Number) -> Number:
    if b == 0:
        raise CalculatorError("modulo by zero")
    return a % b


def _power(base: Number, exponent: Number) -> Number:
    if isinstance(exponent, Rational) and Fraction(exponent).denominator == 1:
        exp = int(exponent)
        if isinstance(base, float):
            try:
                return math.pow(base, exp)
            except OverflowError:
                raise CalculatorError("result is too large") from None
            except ValueError:  # 0.0 ** -1
                raise CalculatorError("zero cannot be raised to a negative power") from None
        if base == 0 and exp < 0:
            raise CalculatorError("zero cannot be raised to a negative power")
        if abs(exp) * max(_bits(base), 1) > MAX_INT_BITS and abs(base) not in (0, 1):
            raise CalculatorError(f"result would exceed {MAX_INT_BITS} bits")
        return Fraction(base) ** exp
    try:
        result = float(base) ** float(exponent)
    except (OverflowError, ZeroDivisionError) as exc:
        raise CalculatorError(f"power failed: {exc}") from None
    if isinstance(result, complex):
        raise CalculatorError("a negative number to a fractional power is not real")
    return result


def _sqrt(x: Number) -> Number:
    if x < 0:
        raise CalculatorError("sqrt of a negative number")
    if isinstance(x, (int, Fraction)):
        f = Fraction(x)
        num, den = math.isqrt(f.numerator), math.isqrt(f.denominator)
        if num * num == f.numerator and den * den == f.denominator:
            return Fraction(num, den)
    return math.sqrt(x)


def _log(x: Number, base: Number | None = None) -> float:
    if x <= 0 or (base is not None and (base <= 0 or base == 1)):
        raise CalculatorError("log needs a positive argument and a positive base other than 1")
    return math.log(x) if base is None else math.log(x, base)


def _factorial(x: Number) -> int:
    n = _as_int(x, "factorial")
    if not 0 <= n <= MAX_FACTORIAL:
        raise CalculatorError(f"factorial needs 0 <= n <= {MAX_FACTORIAL}")
    return math.factorial(n)


def _combinatoric(fn: Callable[[int, int], int], name: str) -> Callable[[Number, Number], int]:
    def apply(n: Number, k: Number) -> int:
        n_, k_ = _as_int(n, name), _as_int(k, name)
        if not 0 <= k_ <= n_ <= 100_000:
            raise CalculatorError(f"{name} needs 0 <= k <= n <= 100000")
        if k_ * max(n_.bit_length(), 1) > MAX_INT_BITS * 4:
            raise CalculatorError(f"{name}({n_}, {k_}) is too large")
        return fn(n_, k_)

    return apply


def _int_fold(fn: Callable[..., int], name: str) -> Callable[..., int]:
    def apply(*args: Number) -> int:
        if not args:
            raise CalculatorError(f"{name} needs at least one argument")
        return fn(*(_as_int(a, name) for a in args))

    return apply


def _float_fn(fn: Callable[[float], float], name: str) -> Callable[[Number], float]:
    def apply(x: Number) -> float:
        try:
            return fn(float(x))
        except (ValueError, OverflowError) as exc:
            raise CalculatorError(f"{name}({format_number(x)}): {exc}") from None

    return apply


def _round(x: Number, ndigits: Number = 0) -> Number:
    digits = _as_int(ndigits, "round")
    if abs(digits) > 100:
        raise CalculatorError("round supports at most 100 digits")
    return round(x) if digits == 0 else round(x, digits)


FUNCTIONS: Mapping[str, Callable[..., Number]] = {
    "sqrt": _sqrt,
    "abs": abs,
    "round": _round,
    "floor": lambda x: math.floor(x),
    "ceil": lambda x: math.ceil(x),
    "min": min,
    "max": max,
    "log": _log,
    "ln": lambda x: _log(x),
    "log10": lambda x: _log(x, 10),
    "log2": lambda x: _log(x, 2),
    "factorial": _factorial,
    "gcd": _int_fold(math.gcd, "gcd"),
    "lcm": _int_fold(math.lcm, "lcm"),
    "comb": _combinatoric(math.comb, "comb"),
    "perm": _combinatoric(math.perm, "perm"),
    "hypot": lambda *xs: math.hypot(*map(float, xs)),
    **{
        name: _float_fn(getattr(math, name), name)
        for name in (
            "exp", "sin", "cos", "tan", "asin", "acos", "atan",
            "sinh", "cosh", "tanh", "degrees", "radians",
        )
    },
}
CONSTANTS: Mapping[str, Number] = {"pi": math.pi, "e": math.e, "tau": math.tau}

_BINARY: Mapping[type[ast.operator], Callable[[Number, Number], Number]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: _divide,
    ast.FloorDiv: _floordiv,
    ast.Mod: _mod,
    ast.Pow: _power,
}
_UNARY: Mapping[type[ast.unaryop], Callable[[Number], Number]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}


def _check_shape(tree: ast.AST) -> None:
    """Reject oversized or deeply nested trees before any arithmetic happens."""
    count = 0
    stack: list[tuple[ast.AST, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise CalculatorError(f"expression has more than {MAX_NODES} parts")
        if depth > MAX_DEPTH:
            raise CalculatorError(f"expression is nested more than {MAX_DEPTH} levels deep")
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


def evaluate(expression: str, variables: Mapping[str, Number] | None = None) -> Number:
    """Evaluate an arithmetic expression; raises :class:`CalculatorError` on any problem."""
    if not isinstance(expression, str):
        raise CalculatorError("expression must be a string")
    if len(expression) > MAX_CHARS:
        raise CalculatorError(f"expression is {len(expression)} characters; the limit is {MAX_CHARS}")
    text = expression.translate(_TRANSLATE).strip()
    if not text:
        raise CalculatorError("empty expression")
    try:
        tree = parse_expression(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        msg = exc.msg if isinstance(exc, SyntaxError) else str(exc) or type(exc).__name__
        raise CalculatorError(f"cannot parse expression: {msg}") from None
    _check_shape(tree)
    names = {**CONSTANTS, **(variables or {})}
    return normalize(_Interpreter(names).visit(tree.body))


class _Interpreter:
    def __init__(self, names: Mapping[str, Number]):
        self.names = names

    def visit(self, node: ast.AST) -> Number:
        method = getattr(self, f"visit_{type(node).__name__}", None)
        if method is None:
            raise CalculatorError(f"{_describe(node)} is not allowed in a calculator expression")
        return normalize(method(node))

    def visit_Constant(self, node: ast.Constant) -> Number:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CalculatorError(f"{value!r} is not a number")
        return value

    def visit_Name(self, node: ast.Name) -> Number:
        if node.id in self.names:
            return self.names[node.id]
        if node.id in FUNCTIONS:
            raise CalculatorError(f"{node.id} is a function: call it as {node.id}(...)")
        raise CalculatorError(f"unknown name {node.id!r}; constants: {sorted(self.names)}")

    def visit_BinOp(self, node: ast.BinOp) -> Number:
        op = _BINARY.get(type(node.op))
        if op is None:
            raise CalculatorError(f"operator {type(node.op).__name__} is not supported")
        left, right = self.visit(node.left), self.visit(node.right)
        if type(node.op) is ast.Mult and _bits(left) + _bits(right) > MAX_INT_BITS:
            raise CalculatorError(f"result would exceed {MAX_INT_BITS} bits")
        try:
            return op(left, right)
        except OverflowError:
            raise CalculatorError("result is too large") from None

    def visit_UnaryOp(self, node: ast.UnaryOp) -> Number:
        op = _UNARY.get(type(node.op))
        if op is None:
            raise CalculatorError(f"operator {type(node.op).__name__} is not supported")
        return op(self.visit(node.operand))

    def visit_Call(self, node: ast.Call) -> Number:
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            what = node.func.id if isinstance(node.func, ast.Name) else _describe(node.func)
            raise CalculatorError(f"unknown function {what}; available: {', '.join(FUNCTIONS)}")
        if node.keywords:
            raise CalculatorError("keyword arguments are not supported")
        args = [self.visit(a) for a in node.args]
        try:
            return FUNCTIONS[node.func.id](*args)
        except TypeError:
            raise CalculatorError(f"wrong number of arguments for {node.func.id}") from None
        except (ValueError, OverflowError, ZeroDivisionError) as exc:
            if isinstance(exc, CalculatorError):
                raise
            raise CalculatorError(f"{node.func.id} failed: {exc}") from None


def _describe(node: ast.AST) -> str:
    return {
        "Attribute": "attribute access",
        "Lambda": "a lambda",
        "Subscript": "indexing",
        "Starred": "unpacking",
    }.get(type(node).__name__, f"'{type(node).__name__}'")


def format_number(x: Number) -> str:
    """Render a result for the model: exact where exact, with a decimal for fractions."""
    if isinstance(x, int):
        return str(x)
    if isinstance(x, Fraction):
        return f"{x.numerator}/{x.denominator} (≈ {_approximate(x)})"
    if x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return format(x, ".12g")


def _approximate(x: Fraction) -> str:
    """12 significant digits of a fraction, also beyond the float range."""
    try:
        return format(float(x), ".12g")
    except OverflowError:
        with decimal.localcontext(decimal.Context(prec=12, Emax=decimal.MAX_EMAX)):
            return format(decimal.Decimal(x.numerator) / decimal.Decimal(x.denominator), ".12g")
