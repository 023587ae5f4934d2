"""Helpers for the tests of deploy/: the Prometheus tools, processes stopped by PID,
the metric names a PromQL expression reads, and Markdown anchors.

The Prometheus programs come from Debian's packages ``prometheus`` (prometheus,
promtool) and ``prometheus-alertmanager`` (alertmanager, amtool); ``make test``
(``scripts/system-deps``) installs them. A missing program FAILS the test that needs
it, naming the package to install, so that CI cannot pass by skipping; set
``DETECTOR_ALLOW_SKIP=1`` to skip those tests instead on a machine without them (a
laptop without the packages).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
ALERT_RULES = DEPLOY / "prometheus" / "rules" / "detector-alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "tests"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
ALERTMANAGER_CONFIG = DEPLOY / "alertmanager" / "alertmanager.yml"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
PAGER_STUB = DEPLOY / "pager-stub" / "pager_stub.py"

PACKAGES = {
    "promtool": "prometheus",
    "prometheus": "prometheus",
    "amtool": "prometheus-alertmanager",
    "alertmanager": "prometheus-alertmanager",
    "docker-compose": "docker-compose",
}
ALIASES = {"alertmanager": ("alertmanager", "prometheus-alertmanager")}


ALLOW_SKIP = "DETECTOR_ALLOW_SKIP"


def tool(name: str) -> str:
    """Path of a program; if it is missing, fail the test naming the Debian package to
    install (skip it instead when ``DETECTOR_ALLOW_SKIP=1``)."""
    for candidate in ALIASES.get(name, (name,)):
        found = shutil.which(candidate)
        if found:
            return found
    message = (
        f"{name} is not installed: apt-get install {PACKAGES.get(name, name)} "
        f"(`make test` installs it with scripts/system-deps; {ALLOW_SKIP}=1 skips instead)"
    )
    if os.environ.get(ALLOW_SKIP) == "1":
        pytest.skip(message)
    pytest.fail(message, pytrace=False)


def run_tool(name: str, *args: str, stdin: bytes | None = None, cwd: Path = REPO) -> str:
    """Run a program; fail the test with its output unless it exits 0. Returns stdout."""
    proc = subprocess.run(
        [tool(name), *args], input=stdin, capture_output=True, cwd=cwd, timeout=120, check=False
    )
    out = proc.stdout.decode(errors="replace")
    err = proc.stderr.decode(errors="replace")
    if proc.returncode != 0:
        pytest.fail(f"{name} {' '.join(args)} exited {proc.returncode}:\n{out}\n{err}")
    return out + err


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alert_rules(path: Path = ALERT_RULES) -> list[dict[str, Any]]:
    """Every alerting rule of a rules file."""
    return [r for g in load_yaml(path)["groups"] for r in g["rules"] if "alert" in r]


# ----- processes -----
@dataclass
class Service:
    """A program started by a test, logging to a file, stopped by PID."""

    name: str
    argv: list[str]
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self) -> Service:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            cwd=self.workdir,
            stdout=log,
            stderr=log,
            env={**os.environ, **self.env},
        )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL, by PID."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def http_get(url: str, timeout: float = 2.0) -> bytes | None:
    """The body of a 200 answer, or ``None``."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            body: bytes = r.read()
            return body
    except OSError:
        return None


def wait_http(service: Service, url: str, timeout: float) -> None:
    """Wait until ``url`` answers 200; fail early with the log if the program exits."""
    deadline = time.monotonic() + timeout
    while http_get(url) is None:
        if not service.alive():
            pytest.fail(f"{service.name} exited:\n{service.log()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(
                f"{service.name} not ready at {url} after {timeout:.0f} s:\n{service.log()}"
            )
        time.sleep(0.1)


# ----- PromQL -----
KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right"}
    | {"offset", "bool", "inf", "nan", "atan2", "start", "end"}
)
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_LABEL_LISTS = re.compile(
    r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
_IDENT = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(?![\w:])(\s*\()?")
GRAFANA_MACROS = re.compile(r"\$__(rate_interval|interval|range|range_s|interval_ms)\b")
GRAFANA_VARIABLE = re.compile(r"\$\{?(\w+)\}?")


def grafana_to_promql(expr: str) -> str:
    """A Grafana target's expression as plain PromQL: macros become ``5m``, template
    variables a regex matching anything, ``label_values(EXPR, label)`` its EXPR."""
    expr = GRAFANA_MACROS.sub("5m", expr)
    expr = GRAFANA_VARIABLE.sub(".*", expr)
    m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", expr, re.DOTALL)
    if m:
        return m.group(1)
    m = re.fullmatch(r"\s*label_values\(\s*(\w+)\s*\)\s*", expr)
    return m.group(1) if m else expr


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (strings, label matchers, durations,
    label lists and function names removed)."""
    rest = _STRING.sub('""', expr)
    rest = _MATCHERS.sub("", rest)
    rest = _RANGES.sub("", rest)
    rest = _LABEL_LISTS.sub(" ", rest)
    names = set()
    for m in _IDENT.finditer(rest):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in KEYWORDS:
            continue
        names.add(word)
    # A selector written as {__name__="..."}.
    names |= set(re.findall(r'__name__\s*=\s*"([^"]+)"', expr))
    return names


def exposed_names(exposition: str) -> set[str]:
    """Every sample name a text exposition can carry, from its ``# TYPE`` lines."""
    names = set()
    for line in exposition.splitlines():
        if not line.startswith("# TYPE "):
            continue
        _, _, name, kind = line.split(maxsplit=3)
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif kind == "summary":
            names |= {f"{name}_sum", f"{name}_count"}
    return names


# ----- Grafana -----
def dashboard_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those inside rows."""
    out = []
    for panel in dashboard.get("panels", []):
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """``(where, expression)`` of every query: panel targets and template variables."""
    out = []
    for panel in dashboard_panels(dashboard):
        for target in panel.get("targets", []):
            if "expr" in target:
                out.append(
                    (f"panel {panel.get('title')!r} ref {target.get('refId')}", target["expr"])
                )
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var.get("query")
            if isinstance(query, dict):
                query = query.get("query")
            out.append((f"variable {var.get('name')!r}", str(query)))
    return out


# ----- Markdown -----
def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation but ``-`` and ``_``
    dropped, spaces to ``-``."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def markdown_anchors(path: Path) -> set[str]:
    """Anchors of a Markdown file's headings (outside code blocks)."""
    anchors = set()
    fenced = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            anchors.add(github_anchor(line.lstrip("#")))
    return anchors
