"""SGLang's own HTTP contract, read from its wheel, to check what trace-rl sends and what the
stand-in server answers, so neither can drift from the real server.

The SGLang server does not import without its GPU stack (``sglang/__init__`` patches
transformers through torchvision; ``sglang.srt.managers.io_struct`` pulls the scheduler, triton
and zmq), but two pieces of the wheel stand alone:

- ``sglang/api/v1/api_types.py``: the generated JSON contract the server itself applies to every
  ``/generate`` body (``generate_contract_error``) -- ``GenerateRequest``, ``SamplingParams``
  (unknown keys rejected), ``GenerateResponse``/``GenerateMetaInfo``. It needs only ``msgspec``
  and is loaded from the wheel as is.
- ``io_struct.py`` and ``entrypoints/http_server.py``: read with ``ast`` (not imported) for the
  fields of the admin requests (``UpdateWeightFromDiskReqInput``) and the routes' HTTP methods.

The wheel is found at ``$TRACE_RL_SGLANG_WHEEL`` or ``.cache/wheels/sglang-*.whl`` (what
``scripts/install.sh`` downloads); nothing is installed, so ``import sglang`` stays absent.
"""

from __future__ import annotations

import ast
import os
import sys
import types
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
API_TYPES = "sglang/api/v1/api_types.py"
IO_STRUCT = "sglang/srt/managers/io_struct.py"
HTTP_SERVER = "sglang/srt/entrypoints/http_server.py"


class ProtocolError(ValueError):
    """A request or reply that the real SGLang server would refuse or misread."""


def find_wheel() -> Path | None:
    explicit = os.environ.get("TRACE_RL_SGLANG_WHEEL")
    if explicit:
        return Path(explicit)
    found = sorted((REPO / ".cache" / "wheels").glob("sglang-*.whl"))
    return found[-1] if found else None


class SGLangContract:
    def __init__(self, wheel: str | Path) -> None:
        self.wheel = Path(wheel)
        with zipfile.ZipFile(self.wheel) as zf:
            dist_info = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA")).split("/")[0]
            self.version = dist_info.removesuffix(".dist-info").split("-")[1]
            api_source = zf.read(API_TYPES).decode()
            io_struct = ast.parse(zf.read(IO_STRUCT).decode())
            http_server = ast.parse(zf.read(HTTP_SERVER).decode())
        self.api = _module_from_source(f"_sglang_api_types_{self.version.replace('.', '_')}", api_source)
        self._classes = {n.name: n for n in io_struct.body if isinstance(n, ast.ClassDef)}
        self.routes = _routes(http_server)
        """HTTP path -> allowed methods, from the server's route decorators."""

    # ------------------------------------------------------------------ schema
    def fields(self, struct_name: str) -> set[str]:
        """Field names of an ``api_types`` struct."""
        import msgspec

        return {f.encode_name for f in msgspec.structs.fields(getattr(self.api, struct_name))}

    def request_fields(self, class_name: str) -> tuple[set[str], set[str]]:
        """(all fields, required fields) of an ``io_struct`` request class, bases included."""
        node = self._classes[class_name]
        names: set[str] = set()
        required: set[str] = set()
        for base in node.bases:
            if isinstance(base, ast.Name) and base.id in self._classes:
                more, more_required = self.request_fields(base.id)
                names |= more
                required |= more_required
        for stmt in node.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                names.add(stmt.target.id)
                if stmt.value is None:
                    required.add(stmt.target.id)
        return names, required

    # ------------------------------------------------------------------ checks
    def check_route(self, path: str, method: str) -> None:
        allowed = self.routes.get(path)
        if allowed is None:
            raise ProtocolError(f"SGLang {self.version} has no route {path}")
        if method.upper() not in allowed:
            raise ProtocolError(f"SGLang {self.version} serves {path} with {sorted(allowed)}, not {method}")

    def check_generate_request(self, body: Mapping[str, Any]) -> None:
        """The server's own contract gate, plus: no key the server would silently ignore."""
        self.check_route("/generate", "POST")
        _decode(self.api.GenerateRequest, body, "/generate request")
        unknown = set(body) - self.fields("GenerateRequest")
        if unknown:
            raise ProtocolError(f"/generate request keys SGLang ignores: {sorted(unknown)}")

    def check_generate_response(self, body: Mapping[str, Any]) -> None:
        """A reply as SGLang writes it: the contract's types, and no field SGLang never sends."""
        reply = _decode(self.api.GenerateResponse, body, "/generate reply")
        unknown = set(body) - self.fields("GenerateResponse")
        meta = body.get("meta_info")
        if reply.meta_info is None or not isinstance(meta, Mapping):
            raise ProtocolError("/generate reply has no meta_info")
        unknown |= {f"meta_info.{k}" for k in set(meta) - self.fields("GenerateMetaInfo")}
        if unknown:
            raise ProtocolError(f"/generate reply fields SGLang does not send: {sorted(unknown)}")

    def check_admin_request(self, path: str, body: Mapping[str, Any], request_class: str | None) -> None:
        """An admin call (weight sync, cache flush): route, method and body fields."""
        self.check_route(path, "POST")
        if request_class is None:
            if body:
                raise ProtocolError(f"{path} takes no body, got {sorted(body)}")
            return
        names, required = self.request_fields(request_class)
        problems = [f"unknown field {k!r}" for k in sorted(set(body) - names)]
        problems += [f"missing required field {k!r}" for k in sorted(required - set(body))]
        if problems:
            raise ProtocolError(f"{path} ({request_class}): " + "; ".join(problems))


def _decode(struct: Any, body: Any, what: str) -> Any:
    try:
        return struct.from_json_value(body)
    except ValueError as exc:  # JsonContractError subclasses ValueError
        raise ProtocolError(f"{what} breaks SGLang's contract: {exc}") from None


def _module_from_source(name: str, source: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__file__ = f"<sglang wheel>/{API_TYPES}"
    sys.modules[name] = module  # msgspec resolves the structs' annotations through sys.modules
    exec(compile(source, module.__file__, "exec"), module.__dict__)  # noqa: S102  (SGLang's own source)
    return module


def _routes(tree: ast.Module) -> dict[str, set[str]]:
    """``@app.post("/x")``, ``@app.get("/x")`` and ``@app.api_route("/x", methods=[...])``."""
    routes: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.AsyncFunctionDef | ast.FunctionDef):
            continue
        for dec in node.decorator_list:
            if not (isinstance(dec, ast.Call) and isinstance(dec.func, ast.Attribute) and dec.args
                    and isinstance(dec.args[0], ast.Constant) and isinstance(dec.args[0].value, str)):
                continue
            kind, path = dec.func.attr, dec.args[0].value
            if kind in ("get", "post", "put", "delete"):
                routes.setdefault(path, set()).add(kind.upper())
            elif kind == "api_route":
                for kw in dec.keywords:
                    if kw.arg == "methods" and isinstance(kw.value, ast.List | ast.Tuple):
                        routes.setdefault(path, set()).update(
                            e.value for e in kw.value.elts if isinstance(e, ast.Constant))
    return routes
