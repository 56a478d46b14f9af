"""Validation of text fields and JSON-able dicts, before anything is written.

Text may arrive as ``str`` or as UTF-8 ``bytes``. NUL characters are stripped
(SQLite and many tools truncate at them); surrounding whitespace is kept except
that a text made only of whitespace counts as empty.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

from .errors import InvalidEncodingError, InvalidParamsError, InvalidTextError


def clean_text(
    value: str | bytes | bytearray | None,
    *,
    what: str,
    max_chars: int,
    error: type[InvalidTextError] = InvalidTextError,
    allow_empty: bool = False,
) -> str:
    """Return ``value`` as a clean ``str`` or raise ``error`` with an actionable message.

    ``what`` names the field for the message ("question", "corrected answer").
    """
    if value is None:
        value = ""
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidEncodingError(
                f"The {what} is not valid UTF-8 text (bad byte at position {exc.start}). "
                "Re-type it or paste it as plain text and try again."
            ) from None
    if not isinstance(value, str):
        raise error(f"The {what} must be text, not {type(value).__name__}.")
    value = value.replace("\x00", "")
    if _has_lone_surrogate(value):
        raise InvalidEncodingError(
            f"The {what} contains characters that are not valid Unicode. "
            "Re-type it or paste it as plain text and try again."
        )
    if not allow_empty and not value.strip():
        raise error(f"The {what} is empty. Type some text and try again.")
    if len(value) > max_chars:
        raise error(
            f"The {what} is {len(value):,} characters long; the limit is {max_chars:,}. "
            "Shorten it and try again."
        )
    return value


def _has_lone_surrogate(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


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
        raise InvalidParamsError(f"The {what} must be a dict, not {type(value).__name__}.")
    try:
        return json.dumps(_finite(dict(value)), sort_keys=True, allow_nan=False, default=_reject)
    except (TypeError, ValueError) as exc:
        raise InvalidParamsError(
            f"The {what} cannot be saved as JSON ({exc}). Use only str, int, float, bool, "
            "None, lists and dicts with string keys."
        ) from None


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _reject(obj: Any) -> Any:
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")
