"""Event-time conversion between RFC 3339 text and epoch seconds (UTC)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Final

# RFC 3339 section 5.6 ``date-time``, plus the space separator its note allows.
# ``datetime.fromisoformat`` alone is far more lenient (week dates, offsets
# without minutes, times without seconds), so the shape is checked first.
_RFC3339: Final = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt ]"
    r"([0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?)"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})?"
)


def to_rfc3339(epoch: float) -> str:
    """Format epoch seconds as RFC 3339 in UTC, e.g. ``2026-03-01T12:00:05Z``.

    Sub-second parts are kept to the millisecond only when present.
    """
    dt = datetime.fromtimestamp(epoch, tz=UTC)
    if dt.microsecond:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def from_rfc3339(text: str) -> float:
    """Parse RFC 3339 text that carries an offset into epoch seconds.

    Raises ``ValueError`` for text without an offset or that is not a timestamp.
    """
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError("not an RFC 3339 timestamp")
    date, time, offset = match.groups()
    if offset is None:
        raise ValueError("timestamp has no UTC offset")
    if offset in ("Z", "z"):
        offset = "+00:00"
    return datetime.fromisoformat(f"{date}T{time}{offset}").timestamp()
