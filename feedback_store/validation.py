"""Validation of text fields and JSON-able dicts, before anything is written.

Text may arrive as ``str`` or as UTF-8 ``bytes``. NUL characters are stripped
(SQLite and many tools truncate at them); surrounding whitespace is kept except
that a text made only of whitespace counts as empty.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

from .errors import (
    InvalidEncodingError,
    InvalidInputError,
    InvalidParamsError,
    InvalidTextError,
)


def clean_text(
    value: str | bytes | bytearray | None,
    *,
    what: str,
    max_chars: int,
    error: type[InvalidTextError] = InvalidTextError,
    allow_empty: bool = False,
) -> str:
    """Return ``value`` as a clean ``str`` or raise ``error`` (``what`` names the field)."""
    if value is None:
        value = ""
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidEncodingError(
                f"the {what} is not valid UTF-8 (bad byte at position {exc.start})",
                field=what, problem="encoding", position=exc.start,
            ) from None
    if not isinstance(value, str):
        raise error(f"the {what} must be text, not {type(value).__name__}", field=what, problem="not_text")
    value = value.replace("\x00", "")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidEncodingError(
            f"the {what} contains characters that are not valid Unicode",
            field=what, problem="encoding", position=exc.start,
        ) from None
    if not allow_empty and not value.strip():
        raise error(f"the {what} is empty", field=what, problem="empty")
    if len(value) > max_chars:
        raise error(
            f"the {what} is {len(value):,} characters long; the limit is {max_chars:,}",
            field=what, problem="too_long", length=len(value), limit=max_chars,
        )
    return value


def clean_optional_text(value: str | bytes | None, *, what: str, max_chars: int) -> str | None:
    """Like ``clean_text`` for an optional free-text field: None or blank gives None."""
    if value is None:
        return None
    text = clean_text(value, what=what, max_chars=max_chars, allow_empty=True)
    return text if text.strip() else None


def to_json(value: Mapping[str, Any] | None, *, what: str) -> str:
    """Serialise a dict for a JSON column (strict JSON), or raise ``InvalidParamsError``.

    NaN and infinities, which JSON cannot hold, are stored as null (a diverged loss
    must not make an adapter unrecordable)."""
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise InvalidParamsError(f"the {what} must be a dict, not {type(value).__name__}", field=what)
    try:
        return json.dumps(_finite(dict(value)), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidParamsError(f"the {what} cannot be stored as JSON ({exc})", field=what) from None


def require_worker(worker_id: str) -> str:
    """A worker id: a non-empty string."""
    if not isinstance(worker_id, str) or not worker_id.strip():
        raise InvalidInputError(f"worker_id must be a non-empty string, not {worker_id!r}", field="worker_id")
    return worker_id


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
