"""One readable line per pydantic validation problem, for messages a model or a person reads."""

from __future__ import annotations

import pydantic


def validation_problems(
    exc: pydantic.ValidationError, *, top: str = "", limit: int | None = None
) -> list[str]:
    """``"field.path: message"`` for each of the first ``limit`` problems; ``top`` names the
    value itself when a problem has no field path."""
    return [f"{'.'.join(map(str, e['loc'])) or top}: {e['msg']}" for e in exc.errors()[:limit]]
