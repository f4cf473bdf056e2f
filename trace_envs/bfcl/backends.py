"""Where BFCL's back-end classes and file-tree types come from, and the file tree's copy: the
ground both the episode state (:mod:`trace_envs.bfcl.state`) and the guards installed into the
classes (:mod:`trace_envs.bfcl.guards`) stand on."""

from __future__ import annotations

import functools
import importlib
from typing import Any


def backend_class(class_name: str) -> type:
    from bfcl_eval.constants.executable_backend_config import CLASS_FILE_PATH_MAPPING

    return getattr(importlib.import_module(CLASS_FILE_PATH_MAPPING[class_name]), class_name)


@functools.cache
def fs_types() -> tuple[type, type]:
    from bfcl_eval.eval_checker.multi_turn_eval.func_source_code import gorilla_file_system as fs

    return fs.Directory, fs.File


def copy_tree(directory: Any, parent: Any) -> tuple[Any, dict[int, Any]]:
    """Copy a Directory tree, relinking parents; map old directory ids to their copies."""
    directory_type, file_type = fs_types()
    clone = object.__new__(directory_type)
    clone.name, clone.parent, clone.contents = directory.name, parent, {}
    by_id = {id(directory): clone}
    for name, item in directory.contents.items():
        if isinstance(item, directory_type):
            sub, sub_ids = copy_tree(item, clone)
            by_id.update(sub_ids)
            clone.contents[name] = sub
        else:
            f = object.__new__(file_type)
            f.__dict__.update(item.__dict__)  # name, content (str) and a datetime: immutable
            clone.contents[name] = f
    return clone, by_id
