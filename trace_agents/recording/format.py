"""The recording format: a real policy's rollout trees, outcomes only, replayable at any budget.

One chunk is one ``.npz`` file (a deflated zip of ``.npy`` files, as ``numpy.savez_compressed``
writes; ``numpy.load(path, allow_pickle=False)`` opens it) holding three arrays:

- ``meta``: UTF-8 JSON (uint8 bytes), a :class:`Meta`: what was recorded and how;
- ``records``: UTF-8 JSON (uint8 bytes), a list of :class:`PromptRecord`: per prompt its text,
  task id, the bare rollouts' outcomes, and every recorded prefix with its transcript and its
  continuations' outcomes;
- ``hidden``: float16 ``[rows, hidden_size]``, the policy's last-layer hidden states; a
  prompt's ``hidden_row`` and each prefix's ``hidden_row`` index it.

A recording is a folder (``meta.json`` and ``chunk-00000.npz``, ``chunk-00001.npz``, ... each
with the same meta, written whole and renamed into place, so a killed run loses at most the chunk
it was writing) or a single chunk file (a subsample). :func:`load_recording` reads either, bounded
in bytes, and turns anything malformed into a ``ValueError``.
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydantic
from pydantic import BaseModel, ConfigDict, Field

FORMAT = "trace-rl-recording"
VERSION = 1
MEMBERS = ("meta", "records", "hidden")
MAX_BYTES = 2 << 30
"""Default bound on a recording's uncompressed size: a few hundred MB is a large real one."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Outcome(_Strict):
    """How one episode ended (a bare rollout, or a continuation from a prefix)."""

    reward: float | None
    """None when the episode failed (a generation or env step error)."""
    status: Literal["terminated", "truncated", "failed"]
    turns: int = Field(ge=0)
    """Turns the episode generated itself (a continuation's own, not its prefix's)."""
    tokens: int = Field(ge=0)
    """Tokens the policy generated in them: the sampling cost."""


class Prefix(_Strict):
    """A non-final turn of a bare rollout, and what happened when the policy continued from it."""

    rollout: int = Field(ge=0)
    """Index of the bare rollout in the prompt's ``bare`` list."""
    depth: int = Field(ge=1)
    """Turns in the prefix."""
    transcript: str
    """``trace_agents.rollout.transcript(node)``: the prefix as the predictor reads it."""
    tokens: int = Field(ge=1)
    """Length of the prefix's ``token_path`` (prompt included): its hidden state is the last one's."""
    hidden_row: int = Field(ge=0)
    continuations: list[Outcome]


class PromptRecord(_Strict):
    index: int = Field(ge=0)
    """Position in the recording's seeded order of the split's tasks."""
    task_id: str
    prompt: str
    prompt_tokens: int = Field(ge=1)
    hidden_row: int = Field(ge=0)
    """The hidden state at the prompt's last token."""
    bare: list[Outcome]
    prefixes: list[Prefix]


class Meta(_Strict):
    format: Literal["trace-rl-recording"] = FORMAT
    version: Literal[1] = VERSION
    model: str
    """What was loaded: a model name or run folder (and arm), ``+warm-start`` when applied."""
    weights: str
    """SHA-256 prefix of the weights as sampled: a resumed run must use the same ones."""
    env: dict[str, Any]
    """``id``, ``split`` and ``kwargs`` of the env the prompts and outcomes come from."""
    sampling: dict[str, Any]
    dialect: str
    seed: int
    bare: int = Field(ge=1)
    prefix_rollouts: int = Field(ge=0)
    continuations: int = Field(ge=1)
    chunk: int = Field(ge=1)
    """Prompts per chunk file; chunk ``k`` holds indices ``[k * chunk, (k + 1) * chunk)``."""
    tasks: int = Field(ge=1)
    """Tasks in the split: indices run up to this."""
    hidden_size: int = Field(ge=1)


@dataclass
class Recording:
    meta: Meta
    prompts: list[PromptRecord]
    hidden: np.ndarray
    """float16 ``[rows, meta.hidden_size]``; rows are indexed by the records' ``hidden_row``."""


def _json_bytes(value: Any) -> np.ndarray:
    return np.frombuffer(json.dumps(value, ensure_ascii=False).encode(), dtype=np.uint8)


def write_chunk(path: Path, recording: Recording) -> None:
    """Write one chunk file atomically (a temporary file renamed into place); the zip's entries
    carry a fixed date, so the same recording is the same bytes."""
    check(recording)
    arrays = {"meta": _json_bytes(recording.meta.model_dump()),
              "records": _json_bytes([p.model_dump() for p in recording.prompts]),
              "hidden": np.ascontiguousarray(recording.hidden, dtype=np.float16)}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with zipfile.ZipFile(tmp, "w") as archive:
            for name in MEMBERS:
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                with archive.open(info, "w") as f:
                    np.lib.format.write_array(f, arrays[name], allow_pickle=False)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def check(recording: Recording) -> None:
    """Cross-field consistency the schema alone cannot state; ``ValueError`` naming the fault."""
    meta, hidden = recording.meta, recording.hidden
    if hidden.dtype != np.float16 or hidden.ndim != 2 or hidden.shape[1] != meta.hidden_size:
        raise ValueError(f"hidden states must be float16 [rows, {meta.hidden_size}], "
                         f"got {hidden.dtype} {list(hidden.shape)}")
    if not np.isfinite(hidden).all():
        raise ValueError("hidden states hold a non-finite value")
    rows: list[int] = []
    indices = [p.index for p in recording.prompts]
    if indices != sorted(set(indices)) or any(i >= meta.tasks for i in indices):
        raise ValueError(f"prompt indices must increase and stay below {meta.tasks}")
    for p in recording.prompts:
        where = f"prompt {p.index}"
        if len(p.bare) != meta.bare:
            raise ValueError(f"{where}: {len(p.bare)} bare rollouts, meta says {meta.bare}")
        rows.append(p.hidden_row)
        for x in p.prefixes:
            if x.rollout >= min(meta.prefix_rollouts, len(p.bare)):
                raise ValueError(f"{where}: a prefix of rollout {x.rollout}, beyond the "
                                 f"{meta.prefix_rollouts} recorded with prefixes")
            turns, failed = p.bare[x.rollout].turns, p.bare[x.rollout].status == "failed"
            if x.depth > turns or (x.depth == turns and not failed):
                raise ValueError(f"{where}: a prefix of {x.depth} turns of a "
                                 f"{turns}-turn rollout is not a non-final turn")
            if len(x.continuations) != meta.continuations:
                raise ValueError(f"{where}: {len(x.continuations)} continuations from a prefix, "
                                 f"meta says {meta.continuations}")
            rows.append(x.hidden_row)
    if sorted(rows) != list(range(len(hidden))):
        raise ValueError(f"hidden rows referenced by the records ({len(rows)}) must be each of the "
                         f"{len(hidden)} rows exactly once")
    for o in (o for p in recording.prompts for o in [*p.bare, *(c for x in p.prefixes
                                                                for c in x.continuations)]):
        if (o.reward is None) != (o.status == "failed") or (o.reward is not None
                                                             and not math.isfinite(o.reward)):
            raise ValueError("an outcome's reward must be a finite number unless it failed")


# ------------------------------------------------------------------------------------ reading
_READ_ERRORS = (OSError, EOFError, KeyError, IndexError, TypeError, ValueError, OverflowError,
                RuntimeError, NotImplementedError, MemoryError, zipfile.BadZipFile, zlib.error,
                struct.error, UnicodeDecodeError)
"""What a damaged zip or npy can raise inside zipfile and numpy (RuntimeError: "encrypted",
NotImplementedError: an unknown compression method)."""


def _member(archive: zipfile.ZipFile, name: str, budget: list[int]) -> np.ndarray:
    """One ``.npy`` member, its declared sizes checked against ``budget`` before anything is
    allocated (numpy allocates the header's shape before reading the data)."""
    info = archive.getinfo(f"{name}.npy")
    if info.file_size > budget[0]:
        raise ValueError(f"member {name} is {info.file_size} bytes, past the loader's bound")
    budget[0] -= info.file_size
    data = archive.read(info)  # CRC-checked, at most the declared size
    stream = io.BytesIO(data)
    version = np.lib.format.read_magic(stream)
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f"member {name}: npy format {version} (1.0 or 2.0 expected)")
    header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
        np.lib.format.read_array_header_2_0
    shape, _, dtype = header(stream)
    if dtype.hasobject:
        raise ValueError(f"member {name} holds Python objects")
    if math.prod(shape) * dtype.itemsize != len(data) - stream.tell():
        raise ValueError(f"member {name}: its header's shape {shape} does not match its data")
    return np.load(io.BytesIO(data), allow_pickle=False)


def read_chunk(path: str | Path, max_bytes: int = MAX_BYTES) -> Recording:
    """One chunk file, validated; ``ValueError`` for anything malformed."""
    path = Path(path)
    try:
        if path.stat().st_size > max_bytes:
            raise ValueError(f"{path.stat().st_size} bytes, past the loader's bound {max_bytes}")
        with zipfile.ZipFile(path) as archive:
            names = sorted(archive.namelist())
            if names != sorted(f"{m}.npy" for m in MEMBERS):
                raise ValueError(f"members {names}, expected {', '.join(MEMBERS)}")
            budget = [max_bytes]
            arrays = {m: _member(archive, m, budget) for m in MEMBERS}
        for m in ("meta", "records"):
            if arrays[m].dtype != np.uint8 or arrays[m].ndim != 1:
                raise ValueError(f"member {m} must be UTF-8 bytes")
        meta = Meta.model_validate_json(arrays["meta"].tobytes())
        prompts = pydantic.TypeAdapter(list[PromptRecord]).validate_json(arrays["records"].tobytes())
        recording = Recording(meta, prompts, arrays["hidden"])
        check(recording)
        return recording
    except FileNotFoundError:
        raise ValueError(f"no recording at {path}") from None
    except _READ_ERRORS as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ValueError(f"{path}: not a valid recording: {type(exc).__name__}: {first}") from None


def chunk_path(folder: Path, k: int) -> Path:
    return folder / f"chunk-{k:05d}.npz"


def chunk_files(folder: Path) -> list[Path]:
    """The folder's chunk files in order; a gap (a missing chunk) is an error."""
    files = sorted(folder.glob("chunk-*.npz"))
    if [f.name for f in files] != [chunk_path(folder, k).name for k in range(len(files))]:
        raise ValueError(f"{folder}: chunk files must be chunk-00000.npz, chunk-00001.npz, ... "
                         f"without gaps; found {', '.join(f.name for f in files)}")
    return files


def join(parts: Sequence[Recording]) -> Recording:
    """Chunks (at least one) of one recording as one: records renumbered onto the stacked hidden
    states."""
    meta, prompts, offset = parts[0].meta, [], 0
    for part in parts:
        if part.meta != meta:
            raise ValueError("chunks with different meta cannot be joined")
        prompts += [_shifted(p, offset) for p in part.prompts]
        offset += len(part.hidden)
    recording = Recording(meta, prompts, np.concatenate([p.hidden for p in parts]))
    check(recording)
    return recording


def _shifted(p: PromptRecord, offset: int) -> PromptRecord:
    return p.model_copy(update={
        "hidden_row": p.hidden_row + offset,
        "prefixes": [x.model_copy(update={"hidden_row": x.hidden_row + offset}) for x in p.prefixes],
    })


def load_recording(path: str | Path, max_bytes: int = MAX_BYTES) -> Recording:
    """A recording folder (every chunk, joined) or one chunk file, bounded by ``max_bytes`` in
    all; ``ValueError`` for anything missing, malformed or inconsistent."""
    path = Path(path)
    if not path.is_dir():
        return read_chunk(path, max_bytes)
    files = chunk_files(path)
    if not files:
        raise ValueError(f"{path}: no chunk files (an empty or unstarted recording)")
    parts = []
    for f in files:
        parts.append(read_chunk(f, max_bytes))
        max_bytes -= f.stat().st_size
    return join(parts)


def subsample(recording: Recording, prompts: int, seed: int = 0) -> Recording:
    """``prompts`` of the recording's prompts drawn without replacement (kept in index order),
    their hidden rows renumbered: a compact file to ship with tests."""
    if prompts < 1:
        raise ValueError(f"a subsample needs at least one prompt (got {prompts})")
    picks = sorted(np.random.default_rng(seed).choice(len(recording.prompts),
                                                      min(prompts, len(recording.prompts)),
                                                      replace=False).tolist())
    rows: list[int] = []
    kept = [_renumbered(recording.prompts[i], rows) for i in picks]
    return Recording(recording.meta, kept, recording.hidden[rows])


def _renumbered(p: PromptRecord, rows: list[int]) -> PromptRecord:
    """``p`` with its hidden rows moved to the end of ``rows`` (which it extends)."""
    rows.append(p.hidden_row)
    prefixes = []
    for x in p.prefixes:
        rows.append(x.hidden_row)
        prefixes.append(x.model_copy(update={"hidden_row": len(rows) - 1}))
    return p.model_copy(update={"hidden_row": len(rows) - len(prefixes) - 1, "prefixes": prefixes})
