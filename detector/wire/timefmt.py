"""Event-time conversion between RFC 3339 text and epoch seconds (UTC)."""

from __future__ import annotations

from datetime import UTC, datetime


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
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        raise ValueError("timestamp has no UTC offset")
    return dt.timestamp()
