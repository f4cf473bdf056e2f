"""The stateful BFCL back-ends of one episode: build, copy (``fork``), encode (snapshots).

BFCL's API classes are plain Python objects whose whole state is ``vars(instance)``: containers
of literals, a ``random.Random``, and (for ``GorillaFileSystem``) a tree of ``Directory``/``File``
objects with parent links. A structural copy that knows exactly these types is several times
faster than ``copy.deepcopy`` (no memo, no reduce protocol) and, unlike sharing, keeps forks
isolated. The same walk encodes the state as tagged JSON for snapshots; an unknown type is an
error, never a pickle.
"""

from __future__ import annotations

import copy
import datetime
import functools
import importlib
import math
import random
from typing import Any

Instances = dict[str, Any]
_TAG = "$t"


def backend_class(class_name: str) -> type:
    from bfcl_eval.constants.executable_backend_config import CLASS_FILE_PATH_MAPPING

    return getattr(importlib.import_module(CLASS_FILE_PATH_MAPPING[class_name]), class_name)


@functools.cache
def _fs_types() -> tuple[type, type]:
    from bfcl_eval.eval_checker.multi_turn_eval.func_source_code import gorilla_file_system as fs

    return fs.Directory, fs.File


def load_instances(entry: dict[str, Any], long_context: bool) -> Instances:
    """Fresh back-ends for ``entry``, set up as BFCL's executor does, owning all their state.

    ``_load_scenario`` of some classes links module-level constants (the long-context
    extensions) into the instance; the copy cuts those links so no episode can alter them.
    """
    from bfcl_eval.constants.executable_backend_config import STATELESS_CLASSES

    instances: Instances = {}
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
    directory_type, _ = _fs_types()
    attrs = vars(obj)
    if isinstance(attrs.get("root"), directory_type):
        root, by_id = _copy_tree(attrs["root"], None)
        rest = {k: _copy(v) for k, v in attrs.items() if k not in ("root", "_current_dir")}
        clone.__dict__.update(rest, root=root, _current_dir=by_id[id(attrs["_current_dir"])])
    else:
        clone.__dict__.update({k: _copy(v) for k, v in attrs.items()})
    return clone


def _copy_tree(directory: Any, parent: Any) -> tuple[Any, dict[int, Any]]:
    """Copy a Directory tree, relinking parents; map old directory ids to their copies."""
    directory_type, file_type = _fs_types()
    clone = object.__new__(directory_type)
    clone.name, clone.parent, clone.contents = directory.name, parent, {}
    by_id = {id(directory): clone}
    for name, item in directory.contents.items():
        if isinstance(item, directory_type):
            sub, sub_ids = _copy_tree(item, clone)
            by_id.update(sub_ids)
            clone.contents[name] = sub
        else:
            f = object.__new__(file_type)
            f.__dict__.update(item.__dict__)  # name, content (str) and a datetime: immutable
            clone.contents[name] = f
    return clone, by_id


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


# ------------------------------------------------------------------------- encode
def encode_instances(instances: Instances) -> dict[str, Any]:
    """JSON-able, exact state of the back-ends (tagged so types and key types round-trip)."""
    encoded = {}
    directory_type, _ = _fs_types()
    for name, obj in instances.items():
        attrs = dict(vars(obj))
        if isinstance(attrs.get("root"), directory_type):
            attrs["_current_dir"] = _path_of(attrs["_current_dir"])
        encoded[name] = {k: _encode(v) for k, v in attrs.items()}
    return encoded


def decode_instances(state: dict[str, Any]) -> Instances:
    instances: Instances = {}
    for name, attrs in state.items():
        obj = object.__new__(backend_class(name))
        values = {k: _decode(v) for k, v in attrs.items()}
        if "_current_dir" in values and isinstance(values["_current_dir"], list):
            values["_current_dir"] = _follow(values["root"], values["_current_dir"])
        obj.__dict__.update(values)
        instances[name] = obj
    return instances


def _path_of(directory: Any) -> list[str]:
    path = []
    while directory.parent is not None:
        path.append(directory.name)
        directory = directory.parent
    return path[::-1]


def _follow(root: Any, path: list[str]) -> Any:
    node = root
    for name in path:
        node = node.contents[name]
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
    directory_type, file_type = _fs_types()
    if kind is directory_type:
        return {_TAG: "dir", "name": value.name,
                "contents": [[k, _encode(v)] for k, v in value.contents.items()]}
    if kind is file_type:
        return {_TAG: "file", **{k: _encode(v) for k, v in vars(value).items()}}
    raise TypeError(f"cannot snapshot BFCL state of type {kind.__name__}")


def _decode(value: Any, parent: Any = None) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    tag = value.get(_TAG)
    if tag is None:
        return {k: _decode(v) for k, v in value.items()}
    if tag == "float":
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
        return datetime.datetime.fromisoformat(value["iso"])
    directory_type, file_type = _fs_types()
    if tag == "dir":
        directory = object.__new__(directory_type)
        directory.name, directory.parent = value["name"], parent
        directory.contents = {k: _decode(v, directory) for k, v in value["contents"]}
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
