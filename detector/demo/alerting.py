"""``--with-prometheus``: the real Prometheus and Alertmanager, and the page arriving.

Prometheus scrapes the demo's worker every second and evaluates the repository's
alert rules (``deploy/prometheus/rules/*.yml``, checked with ``promtool`` first;
a minimal "rule paused" alert when they are missing or do not check). Alertmanager
routes every alert, without waiting, to a webhook the demo serves on loopback,
which writes each page into the event log. Configs are generated into the demo's
temporary directory (JSON is YAML), pointing at the demo's own ports.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from detector.broker import HOST, free_port
from detector.demo.processes import Child

REPO_RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "rules"
"""The alert rules of the repository (absent in an installed package)."""
ALERTMANAGER_NAMES = ("alertmanager", "prometheus-alertmanager")

FALLBACK_RULES: dict[str, Any] = {
    "groups": [
        {
            "name": "detector-demo",
            "rules": [
                {
                    "alert": "DetectorRulePaused",
                    "expr": 'max by (rule_id) (detector_rule_state{state=~"open|half_open"}) == 1',
                    "labels": {"severity": "page"},
                    "annotations": {
                        "summary": "Rule {{ $labels.rule_id }} was paused by the "
                        "over-enforcement detector"
                    },
                }
            ],
        }
    ]
}

OnPage = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Binaries:
    """Where Prometheus, Alertmanager and promtool are installed (``None``: absent)."""

    prometheus: str | None
    alertmanager: str | None
    promtool: str | None

    @classmethod
    def find(cls) -> Binaries:
        """Look them up on ``PATH``."""
        am = next((p for p in map(shutil.which, ALERTMANAGER_NAMES) if p), None)
        return cls(shutil.which("prometheus"), am, shutil.which("promtool"))

    @property
    def missing(self) -> list[str]:
        """Names of the programs the demo needs but cannot find."""
        out = []
        if self.prometheus is None:
            out.append("prometheus")
        if self.alertmanager is None:
            out.append("alertmanager")
        return out


def rule_files(workdir: Path, promtool: str | None, source: Path = REPO_RULES) -> list[Path]:
    """The repository's rule files when promtool accepts them, else the fallback rule."""
    found = sorted(source.glob("*.yml")) if source.is_dir() else []
    if found and promtool is not None:
        check = subprocess.run(
            [promtool, "check", "rules", *map(str, found)],
            capture_output=True,
            timeout=30,
            check=False,
        )
        if check.returncode == 0:
            return found
    fallback = workdir / "demo-rules.yml"
    fallback.write_bytes(orjson.dumps(FALLBACK_RULES, option=orjson.OPT_INDENT_2))
    return [fallback]


def prometheus_config(worker_port: int, alertmanager_port: int, rules: list[Path]) -> bytes:
    """Scrape the worker every second; send alerts to the local Alertmanager."""
    return orjson.dumps(
        {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in rules],
            "alerting": {
                "alertmanagers": [
                    {"static_configs": [{"targets": [f"{HOST}:{alertmanager_port}"]}]}
                ]
            },
            "scrape_configs": [
                {
                    "job_name": "detector",
                    "static_configs": [{"targets": [f"{HOST}:{worker_port}"]}],
                }
            ],
        },
        option=orjson.OPT_INDENT_2,
    )


def alertmanager_config(webhook_url: str) -> bytes:
    """Every alert to the demo's webhook, grouped per alert and rule, without waiting."""
    return orjson.dumps(
        {
            "route": {
                "receiver": "demo-pager",
                "group_by": ["alertname", "rule_id"],
                "group_wait": "1s",
                "group_interval": "5s",
                "repeat_interval": "1h",
            },
            "receivers": [
                {
                    "name": "demo-pager",
                    "webhook_configs": [{"url": webhook_url, "send_resolved": True}],
                }
            ],
        },
        option=orjson.OPT_INDENT_2,
    )


def describe_page(payload: dict[str, Any]) -> list[str]:
    """Event-log lines for one Alertmanager webhook notification."""
    out = []
    for alert in payload.get("alerts", []):
        labels = alert.get("labels", {})
        summary = alert.get("annotations", {}).get("summary", "")
        out.append(
            f"PAGE ({alert.get('status', '?')}, {labels.get('severity', '?')}): "
            f"{labels.get('alertname', '?')} {labels.get('rule_id', '')} — {summary}".rstrip()
        )
    return out


class Webhook:
    """The demo's pager: an HTTP endpoint on loopback that receives Alertmanager's pages."""

    def __init__(self, on_page: OnPage) -> None:
        self.on_page = on_page
        self.port = free_port()
        self.pages: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """Where Alertmanager posts."""
        return f"http://{HOST}:{self.port}/page"

    async def start(self) -> None:
        """Listen."""
        app = web.Application()
        app.router.add_post("/page", self._receive)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, HOST, self.port).start()

    async def stop(self) -> None:
        """Close the port."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _receive(self, request: web.Request) -> web.Response:
        payload = orjson.loads(await request.read())
        if isinstance(payload, dict):
            self.pages.append(payload)
            self.on_page(payload)
        return web.Response(text="ok")


@dataclass
class Alerting:
    """Prometheus and Alertmanager child processes (configured, then started)."""

    prometheus: Child
    alertmanager: Child
    prometheus_port: int
    alertmanager_port: int

    @classmethod
    def create(
        cls, binaries: Binaries, workdir: Path, worker_port: int, webhook_url: str
    ) -> Alerting:
        """Write the configs into ``workdir``; the processes are not started yet."""
        assert binaries.prometheus is not None and binaries.alertmanager is not None
        prom_port, am_port = free_port(), free_port()
        rules = rule_files(workdir, binaries.promtool)
        prom_cfg = workdir / "prometheus.yml"
        prom_cfg.write_bytes(prometheus_config(worker_port, am_port, rules))
        am_cfg = workdir / "alertmanager.yml"
        am_cfg.write_bytes(alertmanager_config(webhook_url))
        prometheus = Child(
            "prometheus",
            [
                binaries.prometheus,
                f"--config.file={prom_cfg}",
                f"--storage.tsdb.path={workdir / 'prometheus-data'}",
                f"--web.listen-address={HOST}:{prom_port}",
            ],
            workdir / "prometheus.log",
        )
        alertmanager = Child(
            "alertmanager",
            [
                binaries.alertmanager,
                f"--config.file={am_cfg}",
                f"--storage.path={workdir / 'alertmanager-data'}",
                f"--web.listen-address={HOST}:{am_port}",
                "--cluster.listen-address=",  # no gossip port
            ],
            workdir / "alertmanager.log",
        )
        return cls(prometheus, alertmanager, prom_port, am_port)

    def start(self) -> None:
        """Start Alertmanager, then Prometheus (from the main thread)."""
        self.alertmanager.start()
        self.prometheus.start()

    @property
    def urls(self) -> list[str]:
        """Where to look."""
        return [
            f"Prometheus http://{HOST}:{self.prometheus_port}/alerts",
            f"Alertmanager http://{HOST}:{self.alertmanager_port}",
        ]

    def stop(self, hurry: Callable[[], bool] = lambda: False) -> None:
        """Stop both by PID."""
        self.prometheus.stop(10.0, hurry)
        self.alertmanager.stop(10.0, hurry)

    def check(self) -> None:
        """Raise if either died."""
        self.alertmanager.check()
        self.prometheus.check()
