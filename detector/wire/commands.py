"""Operator commands (topic ``detector.commands``, key = rule id) and their signatures.

Wire form (one JSON object, UTF-8)::

    {"command_id": "5f0c...", "kind": "pause", "rule_id": "bot.automation",
     "operator": "alice@example.com", "reason": "INC-4711: bans of old accounts",
     "issued_at": "2026-03-01T12:00:05Z", "grace_seconds": 0,
     "signature": "<64 hex digits>"}

``signature`` is HMAC-SHA256, in lowercase hex, over the *canonical form*: the
object as sent, without ``signature``, serialised as JSON with sorted keys and no
whitespace (``orjson.dumps(..., option=OPT_SORT_KEYS)``; Python's
``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` gives
the same bytes). Every field, including unknown ones, is covered. The key is shared by
the operators' tooling and the detector (``DETECTOR_COMMAND_KEY_FILE``); it is at
least 32 bytes and never logged.

Kinds, and the rule id each takes:

========================  ========  ===============================================
kind                      rule id   effect
========================  ========  ===============================================
``pause``                 a rule    forced open: only an operator resumes it
``resume``                a rule    closed again; ``grace_seconds`` without re-trips
``disable``               a rule    detection off for the rule
``enable``                a rule    detection on again
``shadow``                a rule    a new rule: judged, never allowed to act
``reset_baseline``        a rule    forget what was learned; warm up again
``halt_all``              ``*``     hold every automated deactivation
``resume_all``            ``*``     lift the global halt
========================  ========  ===============================================

A command is *accepted* when the detector has a key, the command parses, its
signature is right, it is not older than the detector's ``COMMAND_MAX_AGE`` (nor
issued in the future beyond the allowed clock skew) and its id was not seen before.
Anything else is *rejected* with one of :data:`REJECT_REASONS`; rejections are
audited and counted, never applied. Applying the same accepted command twice changes nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Final

import orjson

from detector.errors import ContractError
from detector.wire.events import GLOBAL_RULE_ID
from detector.wire.timefmt import from_rfc3339, to_rfc3339

KINDS: Final = (
    "pause",
    "resume",
    "disable",
    "enable",
    "shadow",
    "reset_baseline",
    "halt_all",
    "resume_all",
)
GLOBAL_KINDS: Final = frozenset({"halt_all", "resume_all"})
REJECT_REASONS: Final = (
    "no_key",
    "malformed",
    "unsigned",
    "bad_signature",
    "stale",
    "from_future",
    "replayed",
)
MIN_KEY_BYTES: Final = 32
MAX_COMMAND_BYTES: Final = 16 * 1024
MAX_TEXT: Final = 1000
"""Longest operator, reason or rule id (characters)."""

_FIELDS: Final = (
    "command_id",
    "kind",
    "rule_id",
    "operator",
    "reason",
    "issued_at",
    "grace_seconds",
)


@dataclass(frozen=True)
class Command:
    """One operator command (signed or not)."""

    command_id: str
    kind: str
    rule_id: str
    operator: str
    reason: str
    issued_at: float
    grace_seconds: float = 0.0
    signature: str = ""
    body: dict[str, Any] | None = field(default=None, compare=False, repr=False)
    """The object as received, without its signature (what the signature covers)."""

    def canonical(self) -> bytes:
        """The bytes the signature covers."""
        return orjson.dumps(self._body(), option=orjson.OPT_SORT_KEYS)

    def _body(self) -> dict[str, Any]:
        if self.body is not None:
            return dict(self.body)
        return {
            "command_id": self.command_id,
            "kind": self.kind,
            "rule_id": self.rule_id,
            "operator": self.operator,
            "reason": self.reason,
            "issued_at": to_rfc3339(self.issued_at),
            "grace_seconds": self.grace_seconds,
        }

    def signed(self, key: bytes) -> Command:
        """This command with its signature."""
        return replace(self, signature=sign(self.canonical(), key))

    def to_dict(self) -> dict[str, Any]:
        """The wire form as a plain mapping (with the signature, if any)."""
        out = self._body()
        if self.signature:
            out["signature"] = self.signature
        return out

    def to_json(self) -> bytes:
        """The wire form as UTF-8 JSON."""
        return orjson.dumps(self.to_dict())

    def verify(self, key: bytes) -> str | None:
        """``None`` if the signature is right, else the rejection reason."""
        if not self.signature:
            return "unsigned"
        expected = sign(self.canonical(), key)
        if not hmac.compare_digest(expected, self.signature):
            return "bad_signature"
        return None

    @classmethod
    def new(
        cls,
        kind: str,
        rule_id: str,
        operator: str,
        reason: str,
        issued_at: float,
        grace_seconds: float = 0.0,
        command_id: str | None = None,
    ) -> Command:
        """A fresh command (validated; unsigned)."""
        cmd = cls(
            command_id or uuid.uuid4().hex,
            kind,
            rule_id,
            operator,
            reason,
            issued_at,
            grace_seconds,
        )
        # Round-trip through the parser: one set of rules for what a command may hold.
        return parse_command(cmd.to_json())

    @classmethod
    def from_dict(cls, obj: Any) -> Command:
        """Parse the wire form; raises :class:`ContractError` naming the field."""
        if not isinstance(obj, dict):
            raise ContractError("malformed", None, "a command must be a JSON object")
        for name in _FIELDS[:-1]:
            if name not in obj or obj[name] is None:
                raise ContractError("malformed", name, "is required")
        texts = {}
        for name in ("command_id", "kind", "rule_id", "operator", "reason"):
            value = obj[name]
            if not isinstance(value, str) or not value.strip():
                raise ContractError("malformed", name, "must be a non-empty string", value)
            if len(value) > MAX_TEXT:
                raise ContractError("malformed", name, f"is longer than {MAX_TEXT}", len(value))
            texts[name] = value
        kind = texts["kind"]
        if kind not in KINDS:
            raise ContractError("malformed", "kind", f"must be one of {', '.join(KINDS)}", kind)
        rule_id = texts["rule_id"]
        if (kind in GLOBAL_KINDS) != (rule_id == GLOBAL_RULE_ID):
            need = f"must be {GLOBAL_RULE_ID!r}" if kind in GLOBAL_KINDS else "must name a rule"
            raise ContractError("malformed", "rule_id", f"{need} for {kind}", rule_id)
        issued = obj["issued_at"]
        if not isinstance(issued, str):
            raise ContractError("malformed", "issued_at", "must be an RFC 3339 time", issued)
        try:
            issued_at = from_rfc3339(issued)
        except ValueError as exc:
            raise ContractError("malformed", "issued_at", str(exc), issued) from None
        grace = obj.get("grace_seconds", 0)
        if (
            isinstance(grace, bool)
            or not isinstance(grace, int | float)
            or not math.isfinite(grace)
            or grace < 0
        ):
            raise ContractError("malformed", "grace_seconds", "must be a number >= 0", grace)
        if grace and kind != "resume":
            raise ContractError("malformed", "grace_seconds", "only a resume takes one", grace)
        signature = obj.get("signature", "")
        if not isinstance(signature, str):
            raise ContractError("malformed", "signature", "must be a hex string", signature)
        return cls(
            texts["command_id"],
            kind,
            rule_id,
            texts["operator"],
            texts["reason"],
            issued_at,
            grace,
            signature,
            {k: v for k, v in obj.items() if k != "signature"},
        )


def sign(canonical: bytes, key: bytes) -> str:
    """HMAC-SHA256 of ``canonical`` under ``key``, in lowercase hex."""
    return hmac.new(key, canonical, hashlib.sha256).hexdigest()


def parse_command(raw: bytes | str | None) -> Command:
    """Parse one command message; raises :class:`ContractError` (reason ``malformed``)."""
    if raw is None:
        raise ContractError("malformed", None, "empty message")
    if isinstance(raw, str):
        raw = raw.encode()
    if len(raw) > MAX_COMMAND_BYTES:
        raise ContractError("malformed", None, f"larger than {MAX_COMMAND_BYTES} bytes", len(raw))
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ContractError("malformed", None, "not JSON (or not UTF-8)") from None
    return Command.from_dict(obj)


def load_key(path: str | None = None, value: str | None = None) -> bytes:
    """The command key from a file (preferred) or a string, checked for length.

    A file's content is used as is, minus surrounding whitespace. Errors never show
    the key.
    """
    if path:
        try:
            with open(path, "rb") as f:
                key = f.read().strip()
        except OSError as exc:
            raise ValueError(f"cannot read the command key file {path!r}: {exc.strerror}") from None
    elif value:
        key = value.strip().encode()
    else:
        raise ValueError("no command key configured (COMMAND_KEY_FILE or COMMAND_KEY)")
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the command key must be at least {MIN_KEY_BYTES} bytes (got {len(key)})")
    return key
