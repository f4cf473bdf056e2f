"""Task suites from Hugging Face ``datasets``: local files or directories, and hub names when online.

    suite = hf_suite("data/math500.jsonl")                                    # a local file
    suite = hf_suite("openai/gsm8k", config="main", hf_split="test")          # the hub (online)
    env = gym.make("trace/Calculator-v0", suite="hf", suite_options={"path": "data/aime.parquet"})
    env = gym.make("trace/Search-v0", suite=hf_suite("nq.jsonl", kind="qa"))

Rows are mapped to tasks by the same rules as the file loaders: math rows by
:func:`trace_envs.tasks.math.math_tasks_from_records` (``problem``/``question`` + ``answer``/
``solution`` with the last ``\\boxed{}``, GSM8K's ``#### 72``), QA rows by
:func:`trace_envs.search.qa.qa_tasks_from_records` (HotpotQA, 2Wiki, MuSiQue, Bamboogle,
FlashRAG/Search-R1 ``golden_answers``). ``hf_split`` is the data set's own split; the env's
``split`` (the stable 80/20 split by task id) still applies on top.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from trace_envs.tasks.base import TaskSuite

Kind = Literal["math", "qa"]
_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}


def hf_suite(
    path: str,
    *,
    kind: Kind = "math",
    config: str | None = None,
    hf_split: str = "train",
    data_files: str | list[str] | None = None,
    revision: str | None = None,
    qa_format: str = "auto",
    cache_dir: str | None = None,
    name: str | None = None,
) -> TaskSuite:
    """Load ``path`` and map its rows to tasks.

    ``path`` is a local file (its suffix picks the builder), a folder written by
    ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk`` (read with ``load_from_disk``; a
    ``Dataset`` folder is one split, so ``hf_split`` picks only among a ``DatasetDict``'s), any
    other local folder, a builder name with ``data_files`` (``"json"``, ``"parquet"``...), or a
    hub data set (needs network). A path that looks local (see :func:`_looks_local`) but is not
    there is a ``FileNotFoundError``, never a hub lookup.
    """
    import datasets

    local = Path(path).expanduser()
    if local.is_file():
        builder = _BUILDERS.get(local.suffix.lower())
        if builder is None:
            raise ValueError(f"{path}: unsupported file type (use one of {sorted(_BUILDERS)})")
        dataset = datasets.load_dataset(builder, data_files=str(local), split=hf_split, cache_dir=cache_dir)
    elif (local / "dataset_dict.json").is_file() or (local / "state.json").is_file():
        dataset = datasets.load_from_disk(str(local))
        if isinstance(dataset, datasets.DatasetDict):
            if hf_split not in dataset:
                raise ValueError(f"{path} holds the splits {sorted(dataset)}, not {hf_split!r}: "
                                 "choose one with hf_split")
            dataset = dataset[hf_split]
    elif local.is_dir() or not _looks_local(path):
        dataset = datasets.load_dataset(path, config, split=hf_split, data_files=data_files,
                                        revision=revision, cache_dir=cache_dir)
    else:
        raise FileNotFoundError(f"no such file or folder: {path} (a hub data set is named "
                                "'name' or 'owner/name')")
    label = name or f"hf:{path}" + (f"[{config}]" if config else "") + f":{hf_split}"
    return suite_from_dataset(dataset, kind=kind, name=label, source=path, qa_format=qa_format)


def _looks_local(path: str) -> bool:
    """Whether ``path`` can only be a local path, not a hub id (``name`` or ``owner/name``):
    absolute, ``./``/``../``/``~``, a data-file suffix, more than two parts, or inside a
    folder that exists here."""
    parts = path.replace("\\", "/").split("/")
    return (path.startswith((".", "~", "/", "\\")) or Path(path).suffix.lower() in _BUILDERS
            or len(parts) > 2 or (len(parts) == 2 and Path(parts[0]).is_dir()))


def suite_from_dataset(
    dataset: Any, *, kind: Kind = "math", name: str = "hf", source: str | None = None, qa_format: str = "auto"
) -> TaskSuite:
    """A task suite from a ``datasets.Dataset`` (or any iterable of dict rows) already in memory.

    ``source`` names the rows in error messages and, for rows without an id, in the task ids
    (``<stem>-<row>``, as the file loaders do).
    """
    rows, source = list(dataset), source or name
    if kind == "math":
        from trace_envs.tasks.math import math_tasks_from_records

        return TaskSuite(name, math_tasks_from_records(rows, source))
    if kind == "qa":
        from trace_envs.search.qa import qa_tasks_from_records

        return TaskSuite(name, qa_tasks_from_records(rows, source, format=qa_format))
    raise ValueError(f"kind must be 'math' or 'qa', not {kind!r}")
