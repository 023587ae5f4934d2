"""The worker's settings, read from ``DETECTOR_*`` environment variables.

Every value is validated when the worker starts; an error names the variable
and the value. Secrets (the SASL password, the command key) are kept in
:class:`Secret`, whose ``repr`` never shows them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from detector.config import EngineConfig, load_config
from detector.errors import ConfigError
from detector.wire.commands import load_key

PREFIX = "DETECTOR_"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""The largest record the worker writes or reads (a checkpoint, an ingest batch)."""
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class Secret:
    """A string that does not show itself in logs, reprs or error messages."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself: only for handing to the library that needs it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True)
class Settings:
    """Everything ``detector worker`` needs; see ``docs/configuration.md``."""

    broker: str = "kafka://127.0.0.1:9092"
    """Kafka bootstrap servers as ``kafka://host:port[;host:port...]``."""
    app_id: str = "over-enforcement-detector"
    topic_actions: str = "enforcement.actions"
    topic_dlq: str = "enforcement.actions.dlq"
    topic_aggregates: str = "detector.aggregates"
    topic_rule_state: str = "detector.rule-state"
    topic_alerts: str = "detector.alerts"
    topic_progress: str = "detector.ingest-progress"
    topic_commands: str = "detector.commands"
    topic_audit: str = "detector.audit"
    topic_affected: str = "detector.affected"
    topic_reinstatements: str = "enforcement.reinstatements"
    command_key_file: str | None = None
    """File holding the operator commands' HMAC key (at least 32 bytes)."""
    command_key: Secret | None = field(default=None, repr=False)
    """The key itself, when no file is used."""
    command_max_age: float = 300.0
    """Commands issued longer ago than this (wall clock) are rejected as stale."""
    command_max_skew: float = 60.0
    """Commands issued further than this in the future are rejected (clock skew)."""
    input_partitions: int = 8
    """Partitions of the input topic when the worker creates it."""
    create_topics: bool = True
    engine_config: str | None = None
    """Path of a JSON file of engine settings (see docs/configuration.md)."""
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    store: str = "memory://"
    data_dir: str = "/tmp/detector-data"
    session_timeout: float = 6.0
    heartbeat_interval: float = 1.0
    flush_interval: float = 0.1
    """Longest time an event waits in the ingest stage before its batch is sent."""
    fetch_max_wait: float = 0.05
    """Longest a fetch waits for data at the broker (lower: less latency, more requests)."""
    max_batch: int = 20_000
    idle_after: float = 5.0
    """A partition without records for this long no longer holds event time back."""
    checkpoint_interval: float = 5.0
    max_future: float = 600.0
    max_event_age: float = 0.0
    """Events older than this (wall clock) go to the dead-letter topic; 0 disables."""
    shutdown_timeout: float = 20.0
    log_level: str = "info"
    log_format: str = "json"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: Secret | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    def __post_init__(self) -> None:
        _require(
            self.broker.startswith("kafka://") and len(self.broker) > 8,
            "BROKER",
            "must look like kafka://host:port[;host:port]",
            self.broker,
        )
        for name in ("input_partitions", "web_port", "max_batch"):
            _require(
                getattr(self, name) > 0,
                name.upper(),
                "must be a positive integer",
                getattr(self, name),
            )
        for name in (
            "session_timeout",
            "heartbeat_interval",
            "flush_interval",
            "fetch_max_wait",
            "idle_after",
            "checkpoint_interval",
            "max_future",
            "shutdown_timeout",
            "command_max_age",
            "command_max_skew",
        ):
            value = getattr(self, name)
            _require(
                math.isfinite(value) and value > 0,
                name.upper(),
                "must be a positive number of seconds",
                value,
            )
        _require(
            self.heartbeat_interval < self.session_timeout,
            "HEARTBEAT_INTERVAL",
            f"must be below SESSION_TIMEOUT={self.session_timeout}",
            self.heartbeat_interval,
        )
        _require(self.max_event_age >= 0, "MAX_EVENT_AGE", "must be >= 0", self.max_event_age)
        _require(
            self.log_level.lower() in ("debug", "info", "warning", "error"),
            "LOG_LEVEL",
            "must be debug, info, warning or error",
            self.log_level,
        )
        _require(
            self.log_format in ("json", "text"),
            "LOG_FORMAT",
            "must be json or text",
            self.log_format,
        )
        _require(
            self.security_protocol in SECURITY_PROTOCOLS,
            "SECURITY_PROTOCOL",
            f"must be one of {', '.join(SECURITY_PROTOCOLS)}",
            self.security_protocol,
        )
        if self.security_protocol.startswith("SASL"):
            _require(
                self.sasl_mechanism in SASL_MECHANISMS,
                "SASL_MECHANISM",
                f"must be one of {', '.join(SASL_MECHANISMS)} with SASL",
                self.sasl_mechanism,
            )
            _require(
                bool(self.sasl_username) and bool(self.sasl_password),
                "SASL_USERNAME",
                "SASL needs DETECTOR_SASL_USERNAME and DETECTOR_SASL_PASSWORD",
                None,
            )
        for name in (
            "ssl_cafile",
            "ssl_certfile",
            "ssl_keyfile",
            "engine_config",
            "command_key_file",
        ):
            path = getattr(self, name)
            _require(path is None or os.path.isfile(path), name.upper(), "no such file", path)
        self.command_signing_key()  # a key that cannot be used is an error at start

    @property
    def bootstrap(self) -> list[str]:
        """``host:port`` entries of the broker URL."""
        return [h for h in self.broker.removeprefix("kafka://").replace(",", ";").split(";") if h]

    def command_signing_key(self) -> bytes | None:
        """The operator commands' key, or ``None`` when none is configured (then every
        command is rejected). Raises :class:`ConfigError` for a key that is too short."""
        if not self.command_key_file and not self.command_key:
            return None
        try:
            return load_key(
                self.command_key_file, self.command_key.reveal() if self.command_key else None
            )
        except ValueError as exc:
            name = "COMMAND_KEY_FILE" if self.command_key_file else "COMMAND_KEY"
            raise ConfigError(PREFIX + name, str(exc)) from None

    def engine(self) -> EngineConfig:
        """The engine's configuration (defaults, or the file's overrides)."""
        return load_config(self.engine_config)

    def kafka_security(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka clients (TLS and SASL)."""
        out: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            out["ssl_context"] = create_ssl_context(
                cafile=self.ssl_cafile, certfile=self.ssl_certfile, keyfile=self.ssl_keyfile
            )
        if self.security_protocol.startswith("SASL"):
            assert self.sasl_password is not None
            out["sasl_mechanism"] = self.sasl_mechanism
            out["sasl_plain_username"] = self.sasl_username
            out["sasl_plain_password"] = self.sasl_password.reveal()
        return out

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read ``DETECTOR_<NAME>`` variables (unknown ``DETECTOR_`` names are an error)."""
        env = os.environ if env is None else env
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, raw in env.items():
            if not key.startswith(PREFIX) or key in _NOT_SETTINGS:
                continue
            name = key[len(PREFIX) :].lower()
            if name not in known:
                raise ConfigError(key, "unknown setting (see docs/configuration.md)")
            values[name] = _convert(key, known[name].type, raw)
        values.update(overrides)
        return cls(**values)


_NOT_SETTINGS: frozenset[str] = frozenset()


def _require(ok: bool, name: str, detail: str, value: object) -> None:
    if not ok:
        raise ConfigError(PREFIX + name.upper(), detail, value)


def _convert(key: str, kind: Any, raw: str) -> Any:
    kind = str(kind)
    try:
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
        if kind.startswith("bool"):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
    except ValueError:
        raise ConfigError(key, f"expected {kind.split(' ')[0]}", raw) from None
    if "Secret" in kind:
        return Secret(raw)
    return raw if raw != "" or "None" not in kind else None
