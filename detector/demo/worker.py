"""The demo's ``detector worker``: its configuration, its process, and its web pages.

The worker is configured the way an operator would configure it, by ``DETECTOR_*``
variables (docs/configuration.md). The demo's choices, and why:

- ``DETECTOR_ENGINE_CONFIG``: the defaults, but two hours of warm-up instead of a
  day (:func:`detector.demo.scenario.demo_config`), so that three hours of history
  give every rule a baseline;
- ``DETECTOR_COMMAND_KEY_FILE``: a key generated for this run in the demo's
  private temporary directory (mode 0600), never printed; the demo signs its
  operator commands with it;
- session timeout 2 s, heartbeat 0.5 s: the embedded broker answers a group join
  after half the session timeout (docs/broker-notes.md), and the demo has one
  worker, so nothing is lost by short timeouts;
- a free loopback port for the web server (``/metrics``, ``/health``, ``/rules``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from detector.broker import HOST, free_port
from detector.config import EngineConfig
from detector.demo.processes import Child, clean_env, worker_argv
from detector.stream.settings import Settings

APP_ID = "detector-demo"
INPUT_PARTITIONS = 4
KEY_BYTES = 32


def write_key(path: Path) -> None:
    """A fresh random command key (hex), readable by this user only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(os.urandom(KEY_BYTES).hex())


def worker_env(
    bootstrap_url: str, workdir: Path, config: EngineConfig, web_port: int
) -> dict[str, str]:
    """The worker's ``DETECTOR_*`` variables; writes its engine config and command key
    into ``workdir``."""
    engine = workdir / "engine.json"
    engine.write_bytes(orjson.dumps(config.to_mapping(), option=orjson.OPT_INDENT_2))
    key = workdir / "command.key"
    write_key(key)
    return {
        "DETECTOR_BROKER": bootstrap_url,
        "DETECTOR_APP_ID": APP_ID,
        "DETECTOR_INPUT_PARTITIONS": str(INPUT_PARTITIONS),
        "DETECTOR_ENGINE_CONFIG": str(engine),
        "DETECTOR_COMMAND_KEY_FILE": str(key),
        "DETECTOR_WEB_HOST": HOST,
        "DETECTOR_WEB_PORT": str(web_port),
        "DETECTOR_DATA_DIR": str(workdir / "worker-data"),
        "DETECTOR_SESSION_TIMEOUT": "2",
        "DETECTOR_HEARTBEAT_INTERVAL": "0.5",
        "DETECTOR_CHECKPOINT_INTERVAL": "2",
        "DETECTOR_SHUTDOWN_TIMEOUT": "10",
        "DETECTOR_LOG_FORMAT": "json",
    }


@dataclass(frozen=True)
class RuleView:
    """One rule as the worker's metrics show it (its last closed bucket)."""

    rule_id: str
    observed: float
    expected: float
    upper: float
    state: str


@dataclass
class Worker:
    """A ``detector worker`` child process and its web pages."""

    settings: Settings
    child: Child

    @classmethod
    def create(
        cls, bootstrap_url: str, workdir: Path, config: EngineConfig, log_path: Path
    ) -> Worker:
        """Configure a worker (not started) in ``workdir``."""
        env = worker_env(bootstrap_url, workdir, config, free_port())
        settings = Settings.from_env(env)  # validated here, as the worker will
        child = Child("worker", worker_argv(), log_path, env=clean_env(env))
        return cls(settings, child)

    @property
    def base_url(self) -> str:
        """Where the worker's web server listens."""
        return f"http://{self.settings.web_host}:{self.settings.web_port}"

    @property
    def metrics_url(self) -> str:
        """The worker's Prometheus endpoint."""
        return f"{self.base_url}/metrics"

    @property
    def command_key(self) -> bytes:
        """The key the worker checks command signatures with."""
        key = self.settings.command_signing_key()
        assert key is not None
        return key

    async def get(self, session: aiohttp.ClientSession, path: str) -> bytes | None:
        """A page of the worker's web server, ``None`` while it does not answer."""
        try:
            async with session.get(
                self.base_url + path, timeout=aiohttp.ClientTimeout(total=2)
            ) as resp:
                if resp.status != 200:
                    return None
                return await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError):
            return None

    async def health(self, session: aiohttp.ClientSession) -> dict[str, Any] | None:
        """``/health``: ``status``, ``owns_engine``, ``watermark``."""
        body = await self.get(session, "/health")
        if body is None:
            return None
        data = orjson.loads(body)
        return data if isinstance(data, dict) else None

    async def rules(self, session: aiohttp.ClientSession) -> list[RuleView] | None:
        """Every rule's last bucket and state, from ``/metrics``."""
        body = await self.get(session, "/metrics")
        return None if body is None else parse_rule_metrics(body.decode())


_RULE_GAUGES = {
    "detector_rule_deactivations": "observed",
    "detector_rule_expected_deactivations": "expected",
    "detector_rule_expected_deactivations_upper": "upper",
}


def parse_rule_metrics(text: str) -> list[RuleView]:
    """Per-rule values from the exposition text (rules without a closed bucket yet are
    left out)."""
    values: dict[str, dict[str, float]] = {}
    states: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            rule_id = sample.labels.get("rule_id")
            if rule_id is None:
                continue
            if sample.name == "detector_rule_state" and sample.value == 1:
                states[rule_id] = sample.labels.get("state", "")
            elif sample.name in _RULE_GAUGES:
                values.setdefault(rule_id, {})[_RULE_GAUGES[sample.name]] = sample.value
    return [
        RuleView(
            rule_id,
            v.get("observed", 0.0),
            v.get("expected", 0.0),
            v.get("upper", 0.0),
            states.get(rule_id, "closed"),
        )
        for rule_id, v in sorted(values.items())
    ]
