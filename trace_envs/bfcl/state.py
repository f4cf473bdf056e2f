"""The stateful BFCL back-ends of one episode: build, copy (``fork``), encode (snapshots).

BFCL's API classes are plain Python objects whose whole state is ``vars(instance)``: containers
of literals, a ``random.Random``, and (for ``GorillaFileSystem``) a tree of ``Directory``/``File``
objects with parent links. A structural copy that knows exactly these types is several times
faster than ``copy.deepcopy`` (no memo, no reduce protocol) and, unlike sharing, keeps forks
isolated. The same walk encodes the state as tagged JSON for snapshots; an unknown type is an
error, never a pickle. Decoding a snapshot (:func:`decode_instances`) checks every instance
against a fresh one of the same entry: the same attributes with compatible types, a file tree
within the limits of :mod:`trace_envs.bfcl.guards`, a current folder inside it.
"""

from __future__ import annotations

import copy
import datetime
import math
import random
from typing import Any

from trace_envs.bfcl import guards
from trace_envs.bfcl.backends import backend_class, copy_tree, fs_types

Instances = dict[str, Any]
_TAG = "$t"


def load_instances(entry: dict[str, Any], long_context: bool) -> Instances:
    """Fresh back-ends for ``entry``, set up as BFCL's executor does, owning all their state.

    ``_load_scenario`` of some classes links module-level constants (the long-context
    extensions) into the instance; the copy cuts those links so no episode can alter them.
    """
    from bfcl_eval.constants.executable_backend_config import STATELESS_CLASSES

    guards.install()
    instances: Instances = {}
    with guards.episode_clock(0):
        for class_name in entry["involved_classes"]:
            instance = backend_class(class_name)()
            if class_name not in STATELESS_CLASSES:
                config = copy.deepcopy(entry["initial_config"].get(class_name, {}))
                instance._load_scenario(config, long_context=long_context)
            instances[class_name] = instance
    return copy_instances(instances)


# --------------------------------------------------------------------------- copy
def copy_instances(instances: Instances) -> Instances:
    """Independent copies of the back-ends (what ``fork`` costs)."""
    return {name: _copy_instance(obj) for name, obj in instances.items()}


def _copy_instance(obj: Any) -> Any:
    clone = object.__new__(type(obj))
    directory_type, _ = fs_types()
    attrs = vars(obj)
    if isinstance(attrs.get("root"), directory_type):
        root, by_id = copy_tree(attrs["root"], None)
        rest = {k: _copy(v) for k, v in attrs.items() if k not in ("root", "_current_dir")}
        clone.__dict__.update(rest, root=root, _current_dir=by_id[id(attrs["_current_dir"])])
    else:
        clone.__dict__.update({k: _copy(v) for k, v in attrs.items()})
    return clone


_IMMUTABLE = (str, int, float, bool, type(None), datetime.datetime, datetime.date)


def _copy(value: Any) -> Any:
    if isinstance(value, _IMMUTABLE):
        return value
    kind = type(value)
    if kind is dict:
        return {k: v if isinstance(v, _IMMUTABLE) else _copy(v) for k, v in value.items()}
    if kind is list:
        return [v if isinstance(v, _IMMUTABLE) else _copy(v) for v in value]
    if kind is tuple:
        return tuple(_copy(v) for v in value)
    if kind is set:
        return set(value)  # set members are hashable, i.e. immutable here
    if kind is random.Random:
        clone = random.Random()
        clone.setstate(value.getstate())
        return clone
    raise TypeError(f"cannot copy BFCL state of type {kind.__name__}")


def copy_value(value: Any) -> Any:
    """An independent copy of a value made of BFCL state types (JSON values included)."""
    return _copy(value)


# ------------------------------------------------------------------------- encode
def encode_instances(instances: Instances) -> dict[str, Any]:
    """JSON-able, exact state of the back-ends (tagged so types and key types round-trip)."""
    encoded = {}
    directory_type, _ = fs_types()
    for name, obj in instances.items():
        attrs = dict(vars(obj))
        if isinstance(attrs.get("root"), directory_type):
            attrs["_current_dir"] = _path_of(attrs["_current_dir"])
        encoded[name] = {k: _encode(v) for k, v in attrs.items()}
    return encoded


def decode_instances(state: Any, reference: Instances) -> Instances:
    """Instances from :func:`encode_instances` output, checked against ``reference`` (fresh
    instances of the same entry); anything they could not hold raises ``ValueError``."""
    if not isinstance(state, dict) or set(state) != set(reference):
        raise ValueError(f"BFCL state must hold exactly the instances {sorted(reference)}")
    instances: Instances = {}
    for name, attrs in state.items():
        expected = vars(reference[name])
        if not isinstance(attrs, dict) or set(attrs) != set(expected):
            raise ValueError(f"{name} state must have exactly the attributes {sorted(expected)}")
        directory_type, _ = fs_types()
        tree = "root" if isinstance(expected.get("root"), directory_type) else None
        try:  # folders and files only where the file tree is: anywhere else, a fork could not copy them
            values = {k: _decode(v, tree=k == tree) for k, v in attrs.items()}
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise ValueError(f"{name} state: {type(exc).__name__}: {exc}") from None
        for key, value in values.items():
            if key != "_current_dir" and not _compatible(expected[key], value):
                raise ValueError(f"{name}.{key} is a {type(value).__name__}, "
                                 f"expected a {type(expected[key]).__name__}")
        if tree:
            _check_tree(values["root"])
            values["_current_dir"] = _follow(values["root"], values["_current_dir"])
        obj = object.__new__(backend_class(name))
        obj.__dict__.update(values)
        instances[name] = obj
    return instances


def _compatible(expected: Any, value: Any) -> bool:
    """Same type, or a number for a number, or ``None`` on either side (BFCL sets some
    attributes only once a call has run)."""
    if expected is None or value is None or type(expected) is type(value):
        return True
    numbers = (int, float)
    return all(isinstance(v, numbers) and not isinstance(v, bool) for v in (expected, value))


def _check_tree(root: Any) -> None:
    directory_type, file_type = fs_types()
    if not isinstance(root, directory_type) or root.parent is not None:
        raise ValueError("GorillaFileSystem.root must be a folder")
    nodes, stack = 0, [(root, 0)]
    while stack:
        directory, depth = stack.pop()
        if depth > guards.MAX_FS_DEPTH:
            raise ValueError(f"the file tree is deeper than {guards.MAX_FS_DEPTH} folders")
        if not isinstance(directory.name, str):
            raise ValueError("a folder name is not a string")
        for key, item in directory.contents.items():
            nodes += 1
            if nodes > guards.MAX_FS_NODES:
                raise ValueError(f"the file tree holds more than {guards.MAX_FS_NODES} items")
            if not isinstance(key, str) or getattr(item, "name", None) != key:
                raise ValueError(f"file tree entry {str(key)[:80]!r} does not match its name")
            if isinstance(item, directory_type):
                stack.append((item, depth + 1))
            elif not (isinstance(item, file_type)
                      and set(vars(item)) == {"name", "content", "_last_modified"}
                      and isinstance(item.content, str)
                      and isinstance(item._last_modified, datetime.datetime)):
                raise ValueError(f"file tree entry {key[:80]!r} is not a file or folder")


def _path_of(directory: Any) -> list[str]:
    path = []
    while directory.parent is not None:
        path.append(directory.name)
        directory = directory.parent
    return path[::-1]


def _follow(root: Any, path: Any) -> Any:
    directory_type, _ = fs_types()
    if not isinstance(path, list) or not all(isinstance(name, str) for name in path):
        raise ValueError("the current folder must be a list of folder names")
    node = root
    for name in path:
        node = node.contents.get(name)
        if not isinstance(node, directory_type):
            raise ValueError(f"the current folder {'/'.join(path)[:200]!r} does not exist")
    return node


def _encode(value: Any) -> Any:
    if value is None or isinstance(value, (str, bool, int)):
        return value
    kind = type(value)
    if kind is float:
        return value if math.isfinite(value) else {_TAG: "float", "v": repr(value)}
    if kind is list:
        return [_encode(v) for v in value]
    if kind is dict:
        if _TAG not in value and all(type(k) is str for k in value):
            return {k: _encode(v) for k, v in value.items()}
        return {_TAG: "map", "items": [[_encode(k), _encode(v)] for k, v in value.items()]}
    if kind is tuple:
        return {_TAG: "tuple", "items": [_encode(v) for v in value]}
    if kind is set:
        return {_TAG: "set", "items": [_encode(v) for v in value]}
    if kind is random.Random:
        version, internal, gauss = value.getstate()
        return {_TAG: "random", "version": version, "state": list(internal), "gauss": gauss}
    if kind is datetime.datetime:
        return {_TAG: "datetime", "iso": value.isoformat()}
    directory_type, file_type = fs_types()
    if kind is directory_type:
        return {_TAG: "dir", "name": value.name,
                "contents": [[k, _encode(v)] for k, v in value.contents.items()]}
    if kind is file_type:
        return {_TAG: "file", **{k: _encode(v) for k, v in vars(value).items()}}
    raise TypeError(f"cannot snapshot BFCL state of type {kind.__name__}")


def _decode(value: Any, parent: Any = None, *, tree: bool = False) -> Any:
    """``value`` decoded; ``tree``: it is the file system's root, the one place that may hold
    (tagged) folders and files."""
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    tag = value.get(_TAG)
    if tag is None:
        return {k: _decode(v) for k, v in value.items()}
    if tag == "float":
        if value["v"] not in ("inf", "-inf", "nan"):
            raise ValueError(f"bad non-finite float {str(value['v'])[:20]!r}")
        return float(value["v"])
    if tag == "map":
        return {_hashable(_decode(k)): _decode(v) for k, v in value["items"]}
    if tag == "tuple":
        return tuple(_decode(v) for v in value["items"])
    if tag == "set":
        return {_hashable(_decode(v)) for v in value["items"]}
    if tag == "random":
        rng = random.Random()
        rng.setstate((value["version"], tuple(value["state"]), value["gauss"]))
        return rng
    if tag == "datetime":
        if not isinstance(value["iso"], str) or len(value["iso"]) > 40:
            raise ValueError("bad datetime")
        return datetime.datetime.fromisoformat(value["iso"])
    directory_type, file_type = fs_types()
    if tag in ("dir", "file") and not tree:
        raise ValueError(f"a {'folder' if tag == 'dir' else 'file'} outside the file tree")
    if tag == "dir":
        directory = object.__new__(directory_type)
        directory.name, directory.parent = value["name"], parent
        directory.contents = {_hashable(k): _decode(v, directory, tree=True) for k, v in value["contents"]}
        if not all(isinstance(v, (directory_type, file_type)) for v in directory.contents.values()):
            raise ValueError("a folder holds something that is not a file or folder")
        return directory
    if tag == "file":
        f = object.__new__(file_type)
        f.__dict__.update({k: _decode(v) for k, v in value.items() if k != _TAG})
        return f
    raise ValueError(f"unknown tag {tag!r} in BFCL state")


def _hashable(value: Any) -> Any:
    if isinstance(value, (list, dict, set)):
        raise ValueError("unhashable key in BFCL state")
    return value
