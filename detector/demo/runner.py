"""The demo's story, from an empty machine to a clean stop.

1. Start the embedded broker, create the topics, start a ``detector worker``
   (and, with ``--with-prometheus``, Prometheus, Alertmanager and the webhook).
2. Backfill three hours of history as fast as the worker reads it, so that every
   rule has a baseline.
3. Live: send traffic in compressed event time while following what the worker
   publishes; the simulated enforcement service honours the gates it reads on
   the rule-state topic. The incident starts; the detector pauses the rule; after
   the cool-down the rule runs in shadow for a probe; the rule's owners deploy a
   fix; the operator resumes the rule with a signed command.
4. Read the ledger, write the CSV, the PNG timeline and the summary; stop every
   process by PID and remove the temporary directory.

SIGINT or SIGTERM at any point cancels the story; the cleanup then runs to the
end (a second signal only makes it use SIGKILL sooner).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import aiohttp
import orjson

from detector.broker import HOST, EmbeddedBroker
from detector.demo.alerting import Alerting, Binaries, Webhook, describe_page
from detector.demo.kafka import Follower, Producer, Published, create_demo_topics
from detector.demo.outcome import (
    Outcome,
    Trip,
    narrate,
)
from detector.demo.report import (
    Summary,
    write_decisions,
    write_ledger_csv,
    write_lines,
    write_timeline,
)
from detector.demo.scenario import (
    Schedule,
    demo_config,
    expected_pause,
)
from detector.demo.traffic import Traffic
from detector.demo.verdict import judge
from detector.demo.view import Status, View
from detector.demo.worker import RuleView, Worker
from detector.errors import DetectorError
from detector.plot import safe_name
from detector.wire.affected import TripSummary
from detector.wire.audit import AuditRecord
from detector.wire.commands import Command
from detector.wire.events import GLOBAL_RULE_ID
from detector.wire.records import Record
from detector.wire.rulestate import RuleStateMessage
from detector.wire.timefmt import to_rfc3339

TICK = 0.05
"""Wall seconds between two sends of the live phase."""
REFRESH = 0.25
"""Wall seconds between two reads of the worker's pages."""
BACKFILL_STEP = 20 * 60.0
"""Event-time seconds of history generated and sent at once."""
WORKER_READY_TIMEOUT = 60.0
HISTORY_TIMEOUT = 120.0
DRAIN_TIMEOUT = 10.0
"""Wall seconds the demo goes on after the end to see the resume and the ledger settle."""
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
OPERATOR = "demo-operator@localhost"
EXIT_INTERRUPTED = 130

INCIDENT_TEXT = {
    "shift": "{rule} starts deactivating long-tenured accounts with no strikes at 6x its rate",
    "surge": "{rule} starts deactivating random accounts at 20x its rate",
    "global": "{n} rules start deactivating at 3x their rates together",
    "reversal": "appeals start reversing {rule}'s decisions at 30x the usual rate",
    "silent": "{rule} stops deciding (a broken feature pipeline)",
}


class DemoError(DetectorError):
    """The demo could not go on (a process died, or a step did not happen in time)."""


@dataclass(frozen=True)
class Options:
    """The command line's choices."""

    incident: str = "shift"
    speed: float = 60.0
    """Simulated seconds per wall-clock second in the live phase."""
    duration: float = 25.0
    """Simulated minutes of live traffic."""
    seed: int = 7
    headless: bool = False
    out: Path = Path("out/demo")
    with_prometheus: bool = False


@dataclass
class Stopped:
    """What the cleanup stopped, for the last line."""

    processes: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


class Demo:
    """One run of the demo. :meth:`main` in an event loop, then :meth:`close` always."""

    def __init__(self, options: Options, view: View) -> None:
        self.options = options
        self.view = view
        self.schedule = Schedule.of(options.duration)
        self.traffic = Traffic(options.incident, options.seed, self.schedule)
        self.config = demo_config()
        self.outcome = Outcome()
        self.summary: Summary | None = None
        self.tmp: Path | None = None
        self.broker: EmbeddedBroker | None = None
        self.worker: Worker | None = None
        self.alerting: Alerting | None = None
        self.webhook: Webhook | None = None
        self.producer: Producer | None = None
        self.follower: Follower | None = None
        self.session: aiohttp.ClientSession | None = None
        self._follow_task: asyncio.Task[None] | None = None
        self.sent: list[bytes] = []
        self.phase = "starting"
        self.event_time: float | None = None
        self.watermark: float | None = None
        self.rules: list[RuleView] = []
        self.started = time.monotonic()
        self.onset_wall: float | None = None
        self.pause_wall: float | None = None
        self.resumed: list[str] = []
        self.interrupted: str | None = None
        self.hurry = False
        self._last_refresh = 0.0
        self.stopped = Stopped()

    # ----- the event loop part -----
    async def main(self) -> int:
        """Run the story; returns the exit code (0: every check passed)."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self._on_signal, sig, task)
        try:
            summary = await self._story()
            return 0 if summary.ok else 1
        except asyncio.CancelledError:
            if self.interrupted is None:
                raise
            return EXIT_INTERRUPTED
        finally:
            # From here on a signal must not cut the cleanup short: it waits, blocked,
            # until close() installs handlers that only make the cleanup hurry.
            signal.pthread_sigmask(signal.SIG_BLOCK, set(STOP_SIGNALS))
            for sig in STOP_SIGNALS:
                loop.remove_signal_handler(sig)
            await self._close_clients()

    def _on_signal(self, sig: signal.Signals, task: asyncio.Task[int]) -> None:
        if self.interrupted is None:
            self.interrupted = sig.name
            self.view.log(f"got {sig.name}: stopping everything the demo started", "operator")
            task.cancel()
        else:
            self.hurry = True

    async def _story(self) -> Summary:
        o = self.options
        self.started = time.monotonic()
        self.tmp = Path(tempfile.mkdtemp(prefix="detector-demo-"))
        self.broker = EmbeddedBroker()
        self.broker.start()
        self.view.log(f"embedded broker (tansu): pid {self.broker.pid}, {self.broker.bootstrap}")
        self.worker = worker = Worker.create(
            self.broker.url, self.tmp, self.config, self.tmp / "worker.log"
        )
        await create_demo_topics(worker.settings)
        worker.child.start()
        self.view.log(
            f"detector worker: pid {worker.child.pid}, metrics at {worker.metrics_url}, "
            f"rules at {worker.base_url}/rules"
        )
        self.session = aiohttp.ClientSession()
        self.producer = Producer(worker.settings)
        await self.producer.start()
        self.follower = Follower(worker.settings, self._on_published)
        self._follow_task = asyncio.create_task(self.follower.run())
        if o.with_prometheus:
            await self._start_alerting()
        await self._backfill()
        await self._live()
        await self._drain()
        return await self._report()

    async def _start_alerting(self) -> None:
        assert self.worker is not None and self.tmp is not None and self.session is not None
        binaries = Binaries.find()
        if binaries.missing:
            self.view.log(
                f"--with-prometheus: {' and '.join(binaries.missing)} not installed "
                "(Debian: apt-get install prometheus prometheus-alertmanager); "
                "going on without them"
            )
            return
        self.webhook = Webhook(self._on_page)
        await self.webhook.start()
        self.alerting = Alerting.create(
            binaries, self.tmp, self.worker.settings.web_port, self.webhook.url
        )
        self.alerting.start()
        a = self.alerting
        self.view.log(
            f"prometheus: pid {a.prometheus.pid}, http://{HOST}:{a.prometheus_port}/alerts; "
            f"alertmanager: pid {a.alertmanager.pid}, http://{HOST}:{a.alertmanager_port}; "
            f"pages to {self.webhook.url}"
        )
        for name, port in (
            ("alertmanager", a.alertmanager_port),
            ("prometheus", a.prometheus_port),
        ):
            await self._until(
                functools.partial(self._answers, f"http://{HOST}:{port}/-/ready"),
                30.0,
                f"{name} to be ready",
            )

    async def _answers(self, url: str) -> bool:
        assert self.session is not None
        try:
            async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as r:
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    # ----- phases -----
    async def _backfill(self) -> None:
        sch = self.schedule
        hours = (sch.live_start - sch.history_start) / 3600
        self.phase = f"backfilling {hours:g} hours of history"
        self.view.log(
            f"backfilling {hours:g} hours of history from {to_rfc3339(sch.history_start)} "
            f"({len(self.traffic.rules)} rules) so that every rule has a baseline"
        )
        t = sch.history_start
        while t < sch.live_start:
            t = min(t + BACKFILL_STEP, sch.live_start)
            # Generating an hour of a platform takes a second: off the loop, so that the
            # view and Ctrl-C stay responsive.
            events = await asyncio.to_thread(self.traffic.until, t)
            await self._send(events)
            self.event_time = t
            await self._refresh(force=True)
        await self._until(
            lambda: (self.watermark or 0.0) >= sch.live_start - 60,
            HISTORY_TIMEOUT,
            "the worker to judge the history",
        )
        self.view.log(
            f"history judged: {self.producer.sent if self.producer else 0:,} actions; "
            f"going live at {self.options.speed:g}x"
        )

    async def _live(self) -> None:
        sch, o = self.schedule, self.options
        self.phase = "live"
        wall0 = time.monotonic()
        sim = sch.live_start
        while sim < sch.end:
            await asyncio.sleep(TICK)
            sim = min(sch.end, sch.live_start + (time.monotonic() - wall0) * o.speed)
            await self._advance(sim)

    async def _drain(self) -> None:
        """Go on a little after the end: the resume's transition and the ledger's last
        records follow the traffic by a moment."""
        sch, o = self.schedule, self.options
        self.phase = "finishing"
        wall0 = time.monotonic()
        sim = sch.end

        def settled() -> bool:
            judged = (self.watermark or 0.0) >= sch.end
            resumed = all(self.outcome.resumed_by_operator(r) for r in self.resumed)
            trip = self._trip()
            ledger = trip is None or all(
                self._trip_summary_closed(t) for t in self.outcome.ledger_trips(trip)
            )
            return judged and resumed and ledger

        while time.monotonic() - wall0 < DRAIN_TIMEOUT and not settled():
            await asyncio.sleep(TICK)
            sim = sch.end + (time.monotonic() - wall0) * o.speed
            await self._advance(sim, story=False)

    def _trip_summary_closed(self, trip: Trip) -> bool:
        summary = self.outcome.trip_summary(trip)
        if summary is None:
            return False
        return summary.status == "closed" or trip.rule_id not in self.resumed

    async def _advance(self, sim: float, story: bool = True) -> None:
        sch = self.schedule
        before = self.event_time or sch.live_start
        await self._send(self.traffic.until(sim))
        self.event_time = sim
        if story:
            if before < sch.onset <= sim:
                self.onset_wall = time.monotonic()
                self._log_incident()
            if before < sch.fix_at <= sim and self.options.incident != "global":
                self.view.log(
                    f"the owners of {self.traffic.incident.rule_ids[0]} deploy a fix: "
                    "it decides normally again",
                    "incident",
                )
            elif before < sch.fix_at <= sim:
                self.view.log("the shared dependency is fixed: the rules decide normally again")
            if before < sch.resume_at <= sim:
                await self._resume()
        await self._refresh()

    def _log_incident(self) -> None:
        inc = self.traffic.incident
        text = INCIDENT_TEXT[self.options.incident].format(
            rule=inc.rule_ids[0], n=len(inc.rule_ids)
        )
        self.view.log(f"INCIDENT at {to_rfc3339(inc.onset)}: {text}", "incident")

    async def _resume(self) -> None:
        """The operator gives every paused rule back to its owners."""
        assert self.producer is not None and self.worker is not None
        paused = self.outcome.still_paused()
        if not paused:
            self.view.log("operator: no rule is paused; nothing to resume", "operator")
            return
        key = self.worker.command_key
        for rule_id in paused:
            kind = "resume_all" if rule_id == GLOBAL_RULE_ID else "resume"
            cmd = Command.new(
                kind,
                rule_id,
                OPERATOR,
                "demo: the fix is deployed and checked",
                issued_at=time.time(),
            ).signed(key)
            await self.producer.send_command(cmd)
            self.resumed.append(rule_id)
            self.view.log(
                f"operator {OPERATOR}: {kind} {rule_id} (signed command {cmd.command_id[:8]})",
                "operator",
            )

    async def _send(self, events: list[tuple[bytes, bytes]]) -> None:
        assert self.producer is not None and self.worker is not None
        self.worker.child.check()
        if self.alerting is not None:
            self.alerting.check()
        if events:
            await self.producer.send_events(events)
            self.sent += [value for _, value in events]

    async def _until(self, condition: Callable[[], object], timeout: float, what: str) -> None:
        """Poll ``condition`` (a function or a coroutine function) with a deadline,
        keeping the view fresh and watching the children."""
        deadline = time.monotonic() + timeout
        while True:
            result = condition()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            if self.worker is not None:
                self.worker.child.check()
            if time.monotonic() > deadline:
                raise DemoError(f"timed out after {timeout:g} s waiting for {what}")
            await self._refresh(force=True)
            await asyncio.sleep(REFRESH)

    async def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_refresh < REFRESH:
            return
        self._last_refresh = now
        if self.worker is not None and self.session is not None:
            health = await self.worker.health(self.session)
            if health is not None and isinstance(health.get("watermark"), int | float):
                self.watermark = float(health["watermark"])
            rules = await self.worker.rules(self.session)
            if rules is not None:
                self.rules = rules
        self.view.update(self._status())

    def _status(self) -> Status:
        urls = []
        if self.worker is not None:
            urls.append(f"metrics {self.worker.metrics_url}")
        if self.alerting is not None:
            urls += self.alerting.urls
        return Status(
            self.phase,
            self.event_time,
            self.watermark,
            self.producer.sent if self.producer else 0,
            self.options.speed if self.phase == "live" else 0.0,
            self.rules,
            self.traffic.incident.rule_ids,
            tuple(urls),
        )

    # ----- what the worker publishes -----
    def _on_published(self, item: Published, key: bytes | None) -> None:
        out = self.outcome
        if isinstance(item, Record):
            out.add_record(item)
            if item.is_transition or item.reason != "silent" or self._watched(item.rule_id):
                self.view.log(narrate(item), "detector")
            trip = self._trip()
            if trip is not None and self.pause_wall is None and item.rule_id == trip.rule_id:
                self.pause_wall = time.monotonic()
        elif isinstance(item, RuleStateMessage):
            if out.add_state(item):
                self.traffic.gates.set(item.rule_id, item.gate)
                if item.gate != "allow" or item.state == "closed":
                    self.view.log(
                        f"enforcement service: {item.rule_id} gate {item.gate.upper()} "
                        f"({item.state})"
                    )
        elif isinstance(item, AuditRecord):
            out.audit.append(item)
            if item.kind == "command":
                self.view.log(
                    f"audit: command on {item.rule_id} by {item.actor}: {item.outcome} "
                    f"({item.reason})",
                    "operator",
                )
        elif key is not None:
            out.add_ledger(key, item)
            if isinstance(item, TripSummary):
                listed = sum(
                    1 for r in out.ledger.values() if getattr(r, "trip_id", None) == item.trip_id
                )
                self.view.log(
                    f"ledger: trip {item.trip_id} {item.status}, onset "
                    f"{to_rfc3339(item.onset)}, paused {to_rfc3339(item.paused_at)} "
                    f"({listed - 1} accounts so far)"
                )

    def _watched(self, rule_id: str) -> bool:
        return rule_id in self.traffic.incident.rule_ids

    def _on_page(self, payload: dict[str, object]) -> None:
        for line in describe_page(payload):
            self.view.log(line, "operator")

    def _trip(self) -> Trip | None:
        want = expected_pause(self.options.incident)
        trips = self.outcome.trips
        if want is not None and want in trips:
            return trips[want]
        return None

    # ----- the end -----
    async def _report(self) -> Summary:
        """Judge the run, write the files, keep the summary."""
        o = self.options
        self.phase = "writing the report"
        await self._refresh(force=True)
        s, accounts = judge(self.traffic, self.outcome, self.resumed, o.speed)
        if s.trip is not None and self.pause_wall is not None and self.onset_wall is not None:
            s.wall_seconds_to_pause = self.pause_wall - self.onset_wall
        o.out.mkdir(parents=True, exist_ok=True)
        if s.ledger is not None:
            csv_path = o.out / "affected-accounts.csv"
            write_ledger_csv(csv_path, accounts)
            s.files["ledger CSV"] = str(csv_path)
        plotted = s.trip.rule_id if s.trip is not None else s.incident_rules[0]
        png = o.out / f"timeline-{safe_name(plotted)}.png"
        written = await asyncio.to_thread(
            write_timeline, png, plotted, self.sent, self.outcome.records, self.config
        )
        if written is not None:
            s.files["PNG timeline"] = str(written)
        else:
            s.notes.append(f"no per-minute series for {plotted}: no PNG written")
        events_path = o.out / "events.jsonl.gz"
        decisions_path = o.out / "decisions.jsonl.gz"
        await asyncio.to_thread(write_lines, events_path, self.sent)
        await asyncio.to_thread(write_decisions, decisions_path, self.traffic.decisions)
        s.files["events sent (replay with: detector backtest FILE)"] = str(events_path)
        s.files["every decision with its ground truth"] = str(decisions_path)
        published_path = o.out / "published.jsonl.gz"
        records = [r.to_json() for r in self.outcome.records]
        await asyncio.to_thread(write_lines, published_path, records)
        s.files["the worker's alerts and transitions, with evidence"] = str(published_path)
        s.files["summary"] = str(o.out / "summary.json")
        if self.webhook is not None:
            s.notes.append(f"{len(self.webhook.pages)} page(s) reached the webhook")
        s.wall_seconds = time.monotonic() - self.started
        (o.out / "summary.json").write_bytes(
            orjson.dumps(s.to_dict(), option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
        )
        self.summary = s
        return s

    async def _close_clients(self) -> None:
        """Stop the Kafka clients and servers of this process (bounded)."""
        if self.follower is not None:
            self.follower.stopping = True
        if self._follow_task is not None:
            self._follow_task.cancel()
            await asyncio.gather(self._follow_task, return_exceptions=True)
        for closing in (
            self.producer.stop() if self.producer else None,
            self.session.close() if self.session else None,
            self.webhook.stop() if self.webhook else None,
        ):
            if closing is not None:
                # The processes are stopped next, whatever happened here.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(closing, 5.0)

    # ----- after the event loop -----
    def close(self) -> Stopped:
        """Stop every process the demo started, by PID, and remove its temporary files.

        Runs with SIGINT and SIGTERM handled by "hurry up": a second Ctrl-C makes the
        remaining stops use SIGKILL at once, but never skips one.
        """

        def hurry_up(signum: int, frame: FrameType | None) -> None:
            self.hurry = True

        previous = {sig: signal.signal(sig, hurry_up) for sig in STOP_SIGNALS}
        signal.pthread_sigmask(signal.SIG_UNBLOCK, set(STOP_SIGNALS))
        try:
            if self.alerting is not None:
                self.alerting.stop(lambda: self.hurry)
                self.stopped.processes += [
                    f"prometheus (pid {self.alerting.prometheus.pid})",
                    f"alertmanager (pid {self.alerting.alertmanager.pid})",
                ]
            if self.worker is not None and self.worker.child.proc is not None:
                self.worker.child.stop(12.0, lambda: self.hurry)
                self.stopped.processes.append(f"worker (pid {self.worker.child.pid})")
            if self.broker is not None and self.broker.running:
                pid = self.broker.pid
                self.broker.stop(timeout=0.5 if self.hurry else 5.0)
                self.stopped.processes.append(f"broker (pid {pid})")
            if self.tmp is not None:
                self._keep_logs()
                shutil.rmtree(self.tmp, ignore_errors=True)
                self.stopped.removed.append(str(self.tmp))
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.stopped

    def _keep_logs(self) -> None:
        """Copy the worker's log to the output directory (useful when something failed)."""
        assert self.tmp is not None
        log = self.tmp / "worker.log"
        if log.exists():
            self.options.out.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log, self.options.out / "worker.log")


def run_demo(options: Options, view: View) -> tuple[int, Demo]:
    """Run the demo to the end (or to a signal) and clean up; returns the exit code."""
    demo = Demo(options, view)
    view.start()
    try:
        code = asyncio.run(demo.main())
    finally:
        try:
            demo.close()
        finally:
            view.stop()
    return code, demo
