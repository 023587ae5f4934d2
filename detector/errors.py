"""The detector's exceptions: one root, a few specific ones.

Every message names the field (or setting) and the offending value, so that a
dead-lettered event or a rejected command can be fixed without reading code.
"""

from __future__ import annotations

from typing import Any

_MAX_VALUE_REPR = 80


def _short(value: Any) -> str:
    text = repr(value)
    if len(text) > _MAX_VALUE_REPR:
        text = text[: _MAX_VALUE_REPR - 3] + "..."
    return text


class DetectorError(Exception):
    """Root of every error the detector raises on purpose."""


class ContractError(DetectorError):
    """An enforcement action (or another wire message) breaks its contract.

    ``reason`` is a short machine-readable code (used as a metric label and in
    dead-letter headers); ``field`` names the offending field, or ``None`` when
    the message as a whole is wrong (not JSON, not an object, too large).
    """

    def __init__(self, reason: str, field: str | None, detail: str, value: Any = None) -> None:
        self.reason = reason
        self.field = field
        self.detail = detail
        self.value = value
        where = f"field {field!r}" if field else "message"
        shown = f" (got {_short(value)})" if value is not None else ""
        super().__init__(f"{where}: {detail}{shown}")


class ConfigError(DetectorError):
    """A setting is missing or has a value the detector cannot use."""

    def __init__(self, setting: str, detail: str, value: Any = None) -> None:
        self.setting = setting
        shown = f" (got {_short(value)})" if value is not None else ""
        super().__init__(f"setting {setting!r}: {detail}{shown}")


class TransitionError(DetectorError):
    """A breaker was asked for a transition its current state does not allow."""

    def __init__(self, rule_id: str, state: str, trigger: str) -> None:
        self.rule_id = rule_id
        self.state = state
        self.trigger = trigger
        super().__init__(f"rule {rule_id!r}: {trigger!r} is not allowed in state {state!r}")


class StateError(DetectorError):
    """A serialised engine state cannot be restored (wrong shape or version)."""
