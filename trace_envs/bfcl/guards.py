"""Keep every BFCL back-end state a real system could have, and every episode's state its own.

bfcl-eval's API classes were written for one run per process, and a few of their calls reach
states that no real system has, which then cannot be forked or snapshotted faithfully:

- ``cp``/``mv`` of a folder into itself builds a cycle in ``GorillaFileSystem``'s tree (a real
  shell refuses: ``cp: cannot copy a directory, 'a', into itself, 'a/a'``);
- ``cp`` of a folder shares the copied children with the original (a later write to one shows
  in both) and ``mv`` leaves the moved children's parent links on the old folder object;
- the tree can grow without bound in depth and size (each ``cp`` can double it);
- ``TwitterAPI.post_tweet(..., tags=[], mentions=[])`` keeps one default list for the whole
  process, so one episode's mention can show up in another's tweet;
- ``File`` stamps itself with the wall clock, so two equal futures give different states.

:func:`refusal` turns the first three into the error a shell would print, before the call runs;
:func:`after_call` repairs what ``cp``/``mv`` leave behind; :func:`install` gives every call its
own copy of mutable defaults and lets a file's clock be the episode's (:func:`episode_clock`).
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import datetime
import decimal
import functools
import inspect
import threading
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from trace_envs.bfcl.backends import backend_class, copy_tree, fs_types

MAX_FS_DEPTH = 32
"""The deepest folder a file system may hold (the root is depth 0)."""
MAX_FS_NODES = 20_000
"""The most files and folders a file system may hold."""
MAX_PRECISION = 1_000
"""The most digits ``MathAPI``'s ``precision`` arguments may ask for."""
MAX_POWER_BITS = 100_000
"""The largest exact integer ``MathAPI.power`` may build."""
EPOCH = datetime.datetime(2024, 1, 1)
"""Episode time of turn 0; turn ``t`` happens ``t`` seconds later."""

_clock: contextvars.ContextVar[datetime.datetime | None] = contextvars.ContextVar(
    "bfcl_episode_clock", default=None
)


class _EpisodeDatetime(datetime.datetime):
    """``datetime.datetime`` whose ``now()`` is the episode's time inside :func:`episode_clock`."""

    @classmethod
    def now(cls, tz: datetime.tzinfo | None = None) -> datetime.datetime:  # type: ignore[override]
        frozen = _clock.get()
        return datetime.datetime.now(tz) if frozen is None else frozen


@contextlib.contextmanager
def episode_clock(turn: int) -> Iterator[None]:
    """Within this block, BFCL's file system reads the episode's time, not the wall clock."""
    token = _clock.set(EPOCH + datetime.timedelta(seconds=turn))
    try:
        yield
    finally:
        _clock.reset(token)


@contextlib.contextmanager
def call_scope(turn: int) -> Iterator[None]:
    """Run one call at episode time ``turn``, and undo the process-wide precision that
    ``MathAPI`` sets (``mpmath.mp.dps``, the decimal context) so no episode sees another's."""
    import mpmath

    dps = mpmath.mp.dps
    try:
        with episode_clock(turn), decimal.localcontext():
            yield
    finally:
        mpmath.mp.dps = dps


_install_lock = threading.Lock()
_installed = False


def install() -> None:
    """Patch bfcl-eval once per process (idempotent, thread-safe): fresh mutable defaults for
    every call of every multi-turn API (BFCL's own checker included), and the episode clock
    for files."""
    global _installed
    with _install_lock:
        if _installed:
            return
        from bfcl_eval.eval_checker.multi_turn_eval.func_source_code import gorilla_file_system

        from trace_envs.bfcl.data import MULTI_TURN_CLASSES

        gorilla_file_system.datetime = types.SimpleNamespace(datetime=_EpisodeDatetime)  # type: ignore[attr-defined]
        for class_name in MULTI_TURN_CLASSES:
            cls = backend_class(class_name)
            for name, method in list(vars(cls).items()):
                if inspect.isfunction(method) and _mutable_defaults(method):
                    setattr(cls, name, _with_fresh_defaults(method))
        _installed = True


def _mutable_defaults(function: Callable[..., Any]) -> dict[str, Any]:
    return {
        name: p.default for name, p in inspect.signature(function).parameters.items()
        if isinstance(p.default, (list, dict, set, bytearray))
    }


def _with_fresh_defaults(method: Callable[..., Any]) -> Callable[..., Any]:
    signature = inspect.signature(method)
    pristine = copy.deepcopy(_mutable_defaults(method))

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        given = signature.bind_partial(*args, **kwargs).arguments
        for name, default in pristine.items():
            if name not in given:
                kwargs[name] = copy.deepcopy(default)
        return method(*args, **kwargs)

    return call


# --------------------------------------------------------------------- file system
def refusal(instance: Any, name: str, arguments: Mapping[str, Any]) -> str | None:
    """The shell's error for a call that would build a pathological state (or, for
    ``MathAPI``, cost unbounded time), else ``None``."""
    precision = arguments.get("precision")
    if isinstance(precision, int) and not 0 <= precision <= MAX_PRECISION:
        return f"precision must be between 0 and {MAX_PRECISION}"
    if name == "power" and _power_too_large(arguments.get("base"), arguments.get("exponent")):
        return f"power: the result would exceed {MAX_POWER_BITS} bits"
    directory_type, _ = fs_types()
    if not isinstance(getattr(instance, "root", None), directory_type):
        return None
    cwd = instance._current_dir
    depth = _depth(cwd)
    if name == "mkdir" and depth + 1 > MAX_FS_DEPTH:
        return f"mkdir: cannot create directory '{arguments.get('dir_name')}': File name too long"
    if name not in ("cp", "mv"):
        return None
    source, destination = arguments.get("source"), arguments.get("destination")
    if not isinstance(source, str) or not isinstance(destination, str):
        return None
    item = cwd.contents.get(source)
    if not isinstance(item, directory_type):
        return None
    target = cwd.contents.get(destination)
    verb = "copy" if name == "cp" else "move"
    if target is item:
        if name == "cp":
            return (f"cp: cannot copy a directory, '{source}', into itself, "
                    f"'{destination}/{source}'")
        return f"mv: cannot move '{source}' to a subdirectory of itself, '{destination}/{source}'"
    landing = depth + (2 if isinstance(target, directory_type) else 1)
    if landing + _height(item) > MAX_FS_DEPTH:
        return f"{name}: cannot {verb} '{source}': File name too long"
    if name == "cp" and _count(instance.root) + _count(item) > MAX_FS_NODES:
        return f"cp: cannot copy '{source}': No space left on device"
    return None


def after_call(instance: Any, name: str, arguments: Mapping[str, Any]) -> None:
    """Make a folder that ``cp``/``mv`` just wrote own its children, as in a real file system."""
    directory_type, _ = fs_types()
    if name not in ("cp", "mv") or not isinstance(getattr(instance, "root", None), directory_type):
        return
    cwd = instance._current_dir
    source, destination = arguments.get("source"), arguments.get("destination")
    landed = cwd.contents.get(destination)
    if isinstance(landed, directory_type) and isinstance(landed.contents.get(source), directory_type) \
            and landed.contents[source].parent is landed:
        landed = landed.contents[source]  # copied or moved *into* an existing folder
    if not isinstance(landed, directory_type):
        return
    landed.contents = copy_tree(landed, landed.parent)[0].contents
    for child in landed.contents.values():
        if isinstance(child, directory_type):
            child.parent = landed


def _power_too_large(base: Any, exponent: Any) -> bool:
    if not (isinstance(base, int) and isinstance(exponent, int)) or abs(base) < 2:
        return False  # float powers overflow to an error; 0 and 1 stay small
    return abs(exponent) * base.bit_length() > MAX_POWER_BITS


def _depth(directory: Any) -> int:
    depth = 0
    while directory.parent is not None:
        depth, directory = depth + 1, directory.parent
    return depth


def _height(directory: Any) -> int:
    directory_type, _ = fs_types()
    best, stack = 0, [(directory, 0)]
    while stack:
        node, level = stack.pop()
        best = max(best, level)
        stack.extend((c, level + 1) for c in node.contents.values() if isinstance(c, directory_type))
    return best


def _count(directory: Any) -> int:
    directory_type, _ = fs_types()
    total, stack = 0, [directory]
    while stack:
        node = stack.pop()
        total += len(node.contents)
        stack.extend(c for c in node.contents.values() if isinstance(c, directory_type))
    return total
