"""One rule's detector: tests, decision policy and breaker, over a plain state.

Per tick with new data the still-filling bucket is judged (a 20x surge does not
wait for the bucket to close); per closed bucket the sequential charts advance,
reversals and silence are tested, and the baseline learns if nothing anomalous
is going on. Findings go through the decision policy:

- an extreme surge (rate at least ``extreme_ratio`` times expected, with
  confidence) pauses regardless of who is hit;
- a sharp surge that also shifts who is hit pauses;
- a sharp surge on the rule's usual population is an alert only;
- a surge in reversals of the rule's actions pauses;
- a rule gone silent is an alert (under-enforcement).

Every transition and alert carries its evidence.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from detector.engine.baseline import Baseline, Position, position
from detector.engine.breaker import (
    CAN_PAUSE,
    OPERATOR_TRIGGERS,
    WATCHED,
    State,
    Trigger,
    next_state,
)
from detector.engine.makeup import Makeup
from detector.engine.params import Params
from detector.engine.stats import binomial_excess, could_exceed, glr_up, llr
from detector.errors import TransitionError
from detector.wire.aggregates import RuleTick
from detector.wire.records import ALERT, TRANSITION, Record
from detector.wire.timefmt import to_rfc3339

WARMUP_LEVEL_BUCKETS = 60
"""Buckets of history before a warming-up rule is judged against its own level."""
HISTORY_BUCKETS = 180
"""Closed buckets kept per rule to size the incident window (3 h of 1-minute buckets)."""
MAX_VERSIONS = 8
SURGE_ALERTS = frozenset({"surge", "extreme_surge", "surge_with_shift", "warmup_cap"})
MAKEUP_REFRESH_BUCKETS = 60
QUIET_BUCKETS = 10
"""Buckets without excess that end a surge episode (and its alert)."""
WINDOWS = (1, 2, 4, 8)
"""Sliding windows (in ticks) of the short-window test: a surge that starts in the
middle of a bucket is judged on its own ticks, not diluted by the bucket's start."""

Emit = Callable[[Record], None]


@dataclass
class RuleState:
    """Everything the detector knows about one rule: a plain, serialisable value."""

    rule_id: str
    bucket: int
    state: str = State.CLOSED.value
    since: float = 0.0
    version: int = 0
    reason: str = ""
    cooldown: float = 0.0
    until: float = 0.0
    grace_until: float = 0.0
    capped: bool = True
    """The absolute warm-up cap applies (not for rules present when the engine started)."""
    rule_version: str | None = None
    known_versions: list[str] = field(default_factory=list)
    prev_baseline: Baseline | None = None
    baseline: Baseline = field(default_factory=Baseline)
    reversals: Baseline = field(default_factory=Baseline)
    makeup: Makeup = field(default_factory=Makeup)
    charts: list[float] = field(default_factory=list)
    onsets: list[int] = field(default_factory=list)
    rev_chart: float = 0.0
    rev_onset: int = 0
    silence_chart: float = 0.0
    silence_onset: int = 0
    version_chart: float = 0.0
    """While a new rule version warms up: evidence against the previous version's baseline."""
    version_onset: int = 0
    alerts: list[str] = field(default_factory=list)
    counted: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    """Every action ever counted for the rule: deactivations, reversals, others."""
    quiet: int = 0
    """Consecutive buckets without excess during a surge episode."""
    # the still-filling bucket
    x: float = 0.0
    rev: float = 0.0
    shadow: float = 0.0
    other: float = 0.0
    cells: dict[str, float] = field(default_factory=dict)
    out_x: float = 0.0
    """Of ``x``, targets outside the rule's usual population (when the make-up is known)."""
    tick_x: float = 0.0
    """Deactivations added since the last judged tick."""
    tick_out: float = 0.0
    recent: list[float] = field(default_factory=list)
    """Deactivations of the last ``max(WINDOWS)`` ticks, oldest first."""
    recent_out: list[float] = field(default_factory=list)
    """Of ``recent``, targets outside the usual population."""
    recent_tick: int = -1
    """Tick index of the newest entry of ``recent``."""
    mu: float = 0.0
    mu_rev: float = 0.0
    disp: float = 0.0
    disp_rev: float = 0.0
    warm: bool = True
    known: bool = False
    # closed buckets, oldest first, ending at ``bucket - 1``
    hist_x: list[float] = field(default_factory=list)
    hist_m: list[float] = field(default_factory=list)
    hist_n: list[float] = field(default_factory=list)
    hist_out: list[float] = field(default_factory=list)
    hist_eout: list[float] = field(default_factory=list)
    hist_rev: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form; :meth:`from_dict` restores it exactly."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, Baseline | Makeup):
                value = value.to_dict()
            elif isinstance(value, list | dict):
                value = value.copy()
            out[name] = value
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RuleState:
        """Inverse of :meth:`to_dict`."""
        values: dict[str, Any] = {
            k: (v.copy() if isinstance(v, list | dict) else v) for k, v in d.items()
        }
        for name in ("baseline", "reversals"):
            values[name] = Baseline.from_dict(values[name])
        if values["prev_baseline"] is not None:
            values["prev_baseline"] = Baseline.from_dict(values["prev_baseline"])
        values["makeup"] = Makeup.from_dict(values["makeup"])
        return cls(**values)


def _band_top(m: float, c: float) -> float:
    """Top of the expected band of a bucket: three standard deviations, plus one."""
    return m + 3.0 * math.sqrt(m + c * m * m) + 1.0


class RuleDetector:
    """The behaviour of one rule over its :class:`RuleState`."""

    __slots__ = ("emit", "p", "s")

    def __init__(self, state: RuleState, params: Params, emit: Emit) -> None:
        self.s = state
        self.p = params
        self.emit = emit
        if not state.charts:
            state.charts = [0.0] * len(params.shifts)
            state.onsets = [state.bucket] * len(params.shifts)

    @classmethod
    def new(
        cls, rule_id: str, bucket: int, at: float, params: Params, emit: Emit, capped: bool = True
    ) -> RuleDetector:
        """A rule seen for the first time, warming up, in ``bucket``."""
        state = RuleState(
            rule_id, bucket, since=at, cooldown=params.cfg.cooldown_seconds, capped=capped
        )
        det = cls(state, params, emit)
        det.open_bucket(bucket, position((bucket + 0.5) * params.bucket_s))
        return det

    # ----- feeding -----
    def add(self, agg: RuleTick, at: float) -> None:
        """Fold one aggregate into the still-filling bucket."""
        s = self.s
        if agg.versions:
            self._note_versions(agg.versions, at)
        s.x += agg.deactivations
        s.tick_x += agg.deactivations
        s.rev += agg.reversals
        counted = s.counted
        counted[0] += agg.deactivations
        counted[1] += agg.reversals
        counted[2] += agg.other
        s.shadow += agg.shadow
        s.other += agg.other
        cells = s.cells
        if s.known:
            usual = s.makeup.usual
            out = 0.0
            for cell, n in agg.cells.items():
                cells[cell] = cells.get(cell, 0.0) + n
                if cell not in usual:
                    out += n
            s.out_x += out
            s.tick_out += out
        else:
            for cell, n in agg.cells.items():
                cells[cell] = cells.get(cell, 0.0) + n

    def on_tick(self, tick: int, j: int, at: float) -> None:
        """Judge the still-filling bucket after ``j`` of its ticks (``tick``: the tick's
        index, ``at``: its end)."""
        s, p = self.s, self.p
        gap = min(tick - s.recent_tick - 1, WINDOWS[-1]) if s.recent_tick >= 0 else 0
        for ring, value in ((s.recent, s.tick_x), (s.recent_out, s.tick_out)):
            if gap > 0:
                ring.extend([0.0] * gap)
            ring.append(value)
            if len(ring) > WINDOWS[-1]:
                del ring[: len(ring) - WINDOWS[-1]]
        s.recent_tick = tick
        s.tick_x = s.tick_out = 0.0
        if s.state not in WATCHED:
            return
        x = s.x
        m = s.mu * j / p.tpb
        if s.warm:
            self._judge_warmup(x, m, j, at)
            return
        h = p.h_burst
        for v in s.charts:
            if p.h_chart - v < h:
                h = p.h_chart - v
        if s.known and x > 0 and s.out_x / x - s.makeup.outside_share >= p.cfg.shift_min_excess:
            h = min(h, p.h_joint_min)
        if could_exceed(x, m, h):
            self._judge(x, m, at, partial=True)
        if s.state in WATCHED:
            self._judge_windows(at)

    def _judge_windows(self, at: float) -> None:
        """The short-window test: the last 1, 2, 4 and 8 ticks against their expectation."""
        s, p = self.s, self.p
        per_tick = s.mu / p.tpb
        recent, recent_out = s.recent, s.recent_out
        h, h_min = p.h_window, p.h_joint_min
        xw = kw = 0.0
        best: tuple[float, int, float, float, float, float] | None = None
        done = 0
        for w in WINDOWS:
            if w > len(recent):
                break
            while done < w:
                done += 1
                xw += recent[-done]
                kw += recent_out[-done]
            mw = per_tick * w
            if not could_exceed(xw, mw, h_min):
                continue
            g = glr_up(xw, mw, s.disp)
            stat, thr = self._joint(g, xw, kw, h)
            if stat >= thr and (best is None or stat / thr > best[0]):
                best = (stat / thr, w, xw, mw, kw, stat)
        if best is None:
            return
        score, w, xw, mw, kw, stat = best
        start = at - w * p.tick_s
        window = (start, xw, kw, s.makeup.outside_share * xw if s.known else 0.0)
        self._surge(f"window_{w * p.tick_s:g}s", stat, stat / score, s.bucket, xw, mw, at, window)

    def _joint(self, g: float, n: float, k: float, h: float) -> tuple[float, float]:
        """Combine rate evidence ``g`` with who-is-hit evidence (``k`` of ``n`` outside).

        Returns ``(statistic, threshold)``: ``(g, h)`` alone, or, when at least a
        modest surge (``h_joint_min``) is mostly hitting outside the usual population,
        the sum of both log-likelihood ratios against a threshold raised for the sum.
        """
        s, p = self.s, self.p
        if g < p.h_joint_min or not s.known or n <= 0:
            return g, h
        p0 = s.makeup.outside_share
        if k / n - p0 < p.cfg.shift_min_excess:
            return g, h
        joint = g + binomial_excess(k, n, p0)
        thr = h + p.joint_extra
        return (joint, thr) if joint / thr > g / h else (g, h)

    # ----- tests -----
    def _judge_warmup(self, x: float, m: float, j: int, at: float) -> None:
        """Warm-up: no seasonal baseline yet, so only gross excess is judged.

        A new rule is paused when a bucket reaches the absolute cap; once it has an
        hour of history, a surge of ``extreme_ratio`` times its own (flat) level
        pauses it too, and a rule whose level is above the cap is judged only that
        way. Rules present when the engine started have no cap: a cold start must
        not pause every busy rule. A new rule version is also held to the previous
        version's baseline.
        """
        s, p = self.s, self.p
        cfg = p.cfg
        r = cfg.extreme_ratio
        frac = j / p.tpb
        has_level = s.baseline.n >= WARMUP_LEVEL_BUCKETS
        level_m = s.baseline.level * frac
        if s.capped and x >= cfg.warmup_cap_per_bucket and (not has_level or x >= r * level_m):
            ev = self._evidence("warmup_cap", x, cfg.warmup_cap_per_bucket, s.bucket, x, m, at)
            self._finding("warmup_cap", ev, at, pause=True)
            return
        if has_level and x > r * level_m:
            g = glr_up(x, r * level_m, s.disp)
            if g >= p.h_extreme:
                ev = self._evidence("warmup_extreme", g, p.h_extreme, s.bucket, x, level_m, at)
                self._finding("extreme_surge", ev, at, pause=cfg.pause_on_extreme)
                return
        prev = s.prev_baseline
        if prev is not None:
            # Accumulated over buckets, with the old version's learned noise: "is the new
            # version deciding at least twice ``extreme_ratio`` times what the old did?"
            ref = prev.expected_at(self._pos) * frac
            stat = s.version_chart + llr(x, r * ref, prev.dispersion(p.rates), 2.0)
            if stat >= p.h_extreme:
                onset = s.version_onset if s.version_chart > 0 else s.bucket
                ev = self._evidence(
                    "extreme_vs_previous_version", stat, p.h_extreme, onset, x, ref, at
                )
                self._finding("extreme_surge", ev, at, pause=cfg.pause_on_extreme)

    def _version_chart(self, x: float) -> None:
        """Advance the chart against the previous version's baseline (bucket close)."""
        s, p = self.s, self.p
        prev = s.prev_baseline
        if prev is None or not s.warm:
            s.version_chart = 0.0
            return
        ref = prev.expected_at(self._pos)
        before = s.version_chart
        s.version_chart = min(
            max(0.0, before + llr(x, p.cfg.extreme_ratio * ref, prev.dispersion(p.rates), 2.0)),
            p.h_extreme * p.cfg.statistic_cap,
        )
        if before == 0.0 and s.version_chart > 0.0:
            s.version_onset = s.bucket

    def _judge(self, x: float, m: float, at: float, partial: bool) -> None:
        """Run the surge tests on count ``x`` against expectation ``m``."""
        s, p = self.s, self.p
        c = s.disp
        best: tuple[float, str, float, float, int] | None = None
        g, thr = self._joint(glr_up(x, m, c), x, s.out_x, p.h_burst)
        if g >= thr:
            best = (g / thr, "burst", g, thr, s.bucket)
        for k, rho in enumerate(p.shifts):
            stat = s.charts[k] + llr(x, m, c, rho) if partial else s.charts[k]
            if stat >= p.h_chart:
                onset = s.onsets[k] if s.charts[k] > 0 else s.bucket
                cand = (stat / p.h_chart, f"cusum_x{rho:g}", stat, p.h_chart, onset)
                if best is None or cand[0] > best[0]:
                    best = cand
        if best is not None:
            _, test, stat, threshold, onset = best
            self._surge(test, stat, threshold, onset, x, m, at)

    def _surge(
        self,
        test: str,
        stat: float,
        threshold: float,
        onset: int,
        x: float,
        m: float,
        at: float,
        window: tuple[float, float, float, float] | None = None,
    ) -> None:
        """A surge test fired: apply the decision policy.

        ``window`` is ``(start, targets, outside, expected outside)`` of a short
        window; without it the evidence spans the closed buckets since ``onset``.
        """
        s, p = self.s, self.p
        cfg = p.cfg
        extra = self._attribution(onset, m)
        if extra is None:
            return
        ev = self._evidence(test, stat, threshold, onset, x, m, at, window)
        ev.update(extra)
        big_x, big_m = ev["observed"], ev["expected"]
        r = cfg.extreme_ratio
        extreme = big_x > r * big_m and glr_up(big_x, r * big_m, s.disp) >= p.h_extreme
        n, k, e = ev.pop("_n"), ev.pop("_k"), ev.pop("_e")
        shift_stat = binomial_excess(k, n, e / n) if n > 0 else 0.0
        shift = n > 0 and (k - e) / n >= cfg.shift_min_excess and shift_stat >= p.h_shift
        ev["shift_statistic"] = round(shift_stat, 3)
        ev["shift_threshold"] = round(p.h_shift, 3)
        if extreme and cfg.pause_on_extreme:
            self._finding("extreme_surge", ev, at, pause=True)
        elif shift and cfg.pause_on_shift:
            self._finding("surge_with_shift", ev, at, pause=True)
        elif cfg.alert_on_usual_surge:
            self._finding("surge", ev, at, pause=False)

    def _attribution(self, onset: int, m: float) -> dict[str, Any] | None:
        """Extra evidence for a surge, or ``None`` when it is not this detector's finding."""
        return {}

    def _window(self, onset: int) -> int:
        """Index into the history lists of the first bucket of an incident window."""
        s = self.s
        return max(0, len(s.hist_x) - (s.bucket - onset))

    def current_makeup(self) -> tuple[float, float, float]:
        """``(targets with known make-up, outside, expected outside)`` of the open bucket."""
        s = self.s
        if not s.known:
            return 0.0, 0.0, 0.0
        return s.x, s.out_x, s.makeup.outside_share * s.x

    def _evidence(
        self,
        test: str,
        stat: float,
        threshold: float,
        onset: int,
        x: float,
        m: float,
        at: float,
        window: tuple[float, float, float, float] | None = None,
    ) -> dict[str, Any]:
        """Evidence over the incident window: closed buckets since ``onset`` plus the
        open bucket's ``x`` against ``m``; or, with ``window``, just that short window."""
        s, p = self.s, self.p
        if window is not None:
            start, n, k, e = window
            big_x, big_m = x, m
        else:
            n0, k0, e0 = self.current_makeup()
            i = self._window(onset)
            big_x = sum(s.hist_x[i:]) + x
            big_m = sum(s.hist_m[i:]) + m
            n = sum(s.hist_n[i:]) + n0
            k = sum(s.hist_out[i:]) + k0
            e = sum(s.hist_eout[i:]) + e0
            start = (s.bucket - (len(s.hist_x) - i)) * p.bucket_s
        # The change point: the firing window's start, or earlier if the strongest
        # chart has been climbing since before it (the CUSUM estimate of the onset).
        onset_time = start
        strongest = max(range(len(s.charts)), key=lambda k: s.charts[k], default=None)
        if strongest is not None and s.charts[strongest] > 0:
            onset_time = min(onset_time, s.onsets[strongest] * p.bucket_s)
        return {
            "test": test,
            "statistic": round(stat, 3),
            "threshold": round(threshold, 3),
            "observed": big_x,
            "expected": round(big_m, 4),
            "ratio": round(big_x / big_m, 3) if big_m > 0 else None,
            "onset": to_rfc3339(onset_time),
            "window_seconds": at - start,
            "outside_share": round(k / n, 4) if n > 0 else None,
            "usual_outside_share": round(e / n, 4) if n > 0 else None,
            "dispersion": round(s.disp, 4),
            "warming_up": s.warm,
            "rule_version": s.rule_version,
            "config_version": p.config_version,
            "_n": n,
            "_k": k,
            "_e": e,
        }

    # ----- findings and transitions -----
    def _finding(self, reason: str, ev: dict[str, Any], at: float, pause: bool) -> None:
        s = self.s
        for key in ("_n", "_k", "_e"):
            ev.pop(key, None)
        state = State(s.state)
        if pause and state in CAN_PAUSE and at >= s.grace_until:
            trigger = Trigger.TRIP if state == State.CLOSED else Trigger.PROBE_FAILED
            if trigger == Trigger.PROBE_FAILED:
                s.cooldown = min(2 * s.cooldown, self.p.cfg.max_cooldown_seconds)
            self._transition(trigger, reason, ev, at)
            s.until = at + s.cooldown
            self._reset_tests()
            return
        if reason in s.alerts:
            return
        s.alerts.append(reason)
        ev["would_pause"] = pause
        self.emit(Record(s.rule_id, at, ALERT, s.state, s.state, reason, ev))

    def _transition(self, trigger: Trigger, reason: str, ev: dict[str, Any], at: float) -> None:
        s = self.s
        old = State(s.state)
        new = next_state(s.rule_id, old, trigger)
        if new is None:
            return
        s.state, s.since, s.reason = new.value, at, reason
        s.version += 1
        ev.setdefault("config_version", self.p.config_version)
        ev["trigger"] = trigger.value
        ev["state_version"] = s.version
        self.emit(Record(s.rule_id, at, TRANSITION, old.value, new.value, reason, ev))

    def _reset_tests(self) -> None:
        s = self.s
        s.charts = [0.0] * len(s.charts)
        s.onsets = [s.bucket] * len(s.charts)
        s.rev_chart = 0.0
        s.silence_chart = 0.0
        s.version_chart = 0.0
        s.alerts = []

    def check_timers(self, at: float) -> None:
        """Cool-down and probe deadlines (event time ``at``)."""
        s, cfg = self.s, self.p.cfg
        if s.state == State.OPEN and at >= s.until:
            self._transition(
                Trigger.COOLDOWN_ELAPSED, "cooldown_elapsed", {"cooldown_seconds": s.cooldown}, at
            )
            s.until = at + cfg.probe_seconds
            self._reset_tests()
        elif s.state == State.HALF_OPEN and at >= s.until:
            failed = self._probe_verdict(at)
            if failed is not None:
                reason, ev = failed
                s.cooldown = min(2 * s.cooldown, cfg.max_cooldown_seconds)
                self._transition(Trigger.PROBE_FAILED, reason, ev, at)
                s.until = at + s.cooldown
                self._reset_tests()
            else:
                self._transition(
                    Trigger.PROBE_PASSED, "probe_passed", {"probe_seconds": cfg.probe_seconds}, at
                )
                s.cooldown = cfg.cooldown_seconds

    def _probe_verdict(self, at: float) -> tuple[str, dict[str, Any]] | None:
        """At the end of a probe: is the rule still abnormal? ``(reason, evidence)`` if so.

        The probe's whole window is compared with its expectation at the modest
        ``probe_alpha``: the question is no longer "is this an incident?" but "is the
        rule back to normal?", and a few minutes of shadow traffic must answer it.
        """
        s, p = self.s, self.p
        cfg = p.cfg
        h = p.h_probe
        start = at - cfg.probe_seconds
        onset = int(start // p.bucket_s)
        frac = min(1.0, (at - s.bucket * p.bucket_s) / p.bucket_s)
        i = self._window(onset)
        buckets = max(1, len(s.hist_x) - i + 1)
        x = sum(s.hist_x[i:]) + s.x
        m = sum(s.hist_m[i:]) + s.mu * frac
        rev = sum(s.hist_rev[i:]) + s.rev
        mrev = max(
            sum(self._rev_expected(b) for b in range(onset, s.bucket)) + s.mu_rev * frac, 1e-3
        )
        n0, k0, e0 = self.current_makeup()
        n = sum(s.hist_n[i:]) + n0
        k = sum(s.hist_out[i:]) + k0
        e = sum(s.hist_eout[i:]) + e0
        ev: dict[str, Any] = {
            "onset": to_rfc3339(start),
            "window_seconds": cfg.probe_seconds,
            "observed": x,
            "expected": round(m, 4),
            "ratio": round(x / m, 3) if m > 0 else None,
            "reversals": rev,
            "expected_reversals": round(mrev, 4),
            "outside_share": round(k / n, 4) if n > 0 else None,
            "usual_outside_share": round(e / n, 4) if n > 0 else None,
            "threshold": round(h, 3),
            "config_version": p.config_version,
            "rule_version": s.rule_version,
        }
        g = glr_up(x, m, s.disp / buckets)
        if g >= h and x >= cfg.probe_max_ratio * m:
            return "probe_failed_surge", {**ev, "test": "probe_rate", "statistic": round(g, 3)}
        g = glr_up(rev, mrev, s.disp_rev / buckets)
        if g >= h and rev >= cfg.reversal_min_count:
            return "probe_failed_reversals", {
                **ev,
                "test": "probe_reversals",
                "statistic": round(g, 3),
            }
        if n > 0 and (k - e) / n >= cfg.shift_min_excess:
            g = binomial_excess(k, n, e / n)
            if g >= h:
                return "probe_failed_shift", {**ev, "test": "probe_shift", "statistic": round(g, 3)}
        return None

    @property
    def timed(self) -> bool:
        """True while a deadline is pending (cool-down or probe)."""
        return self.s.state in (State.OPEN, State.HALF_OPEN)

    def command(
        self, trigger: Trigger, at: float, evidence: dict[str, Any], grace_seconds: float = 0.0
    ) -> bool:
        """Apply an operator trigger; ``False`` when it changed nothing."""
        if trigger not in OPERATOR_TRIGGERS:
            raise TransitionError(self.s.rule_id, self.s.state, trigger.value)
        s = self.s
        before = s.version
        self._transition(trigger, trigger.value, dict(evidence), at)
        if s.version == before:
            return False
        if trigger in (Trigger.OPERATOR_RESUME, Trigger.OPERATOR_ENABLE):
            s.grace_until = at + grace_seconds
            s.cooldown = self.p.cfg.cooldown_seconds
        self._reset_tests()
        return True

    def reset_baseline(self, at: float, evidence: dict[str, Any]) -> None:
        """Forget what was learned (e.g. after an intended policy change)."""
        s = self.s
        s.baseline, s.reversals, s.makeup = Baseline(), Baseline(), Makeup()
        s.prev_baseline = None
        self._reset_tests()
        s.warm, s.known = True, False
        self.emit(Record(s.rule_id, at, ALERT, s.state, s.state, "baseline_reset", evidence))

    def _note_versions(self, versions: list[str], at: float) -> None:
        s = self.s
        for v in versions:
            if v in s.known_versions:
                continue
            s.known_versions = [*s.known_versions, v][-MAX_VERSIONS:]
            previous, s.rule_version = s.rule_version, v
            if previous is None:
                continue
            if not s.baseline.warming_up(self.p.rates):
                s.prev_baseline = s.baseline
            s.baseline, s.reversals, s.makeup = Baseline(), Baseline(), Makeup()
            self._reset_tests()
            s.warm, s.known, s.capped = True, False, True
            self.emit(
                Record(
                    s.rule_id,
                    at,
                    ALERT,
                    s.state,
                    s.state,
                    "rule_version_changed",
                    {
                        "previous_version": previous,
                        "new_version": v,
                        "note": "new baseline warms up; the old one bounds extreme surges",
                        "config_version": self.p.config_version,
                    },
                )
            )

    # ----- buckets -----
    @property
    def _pos(self) -> Position:
        return position((self.s.bucket + 0.5) * self.p.bucket_s)

    def open_bucket(self, bucket: int, pos: Position) -> None:
        """Start ``bucket`` (profile position of its midpoint: ``pos``)."""
        s, p = self.s, self.p
        s.bucket = bucket
        s.x = s.rev = s.shadow = s.other = s.out_x = 0.0
        s.cells = {}
        s.mu = s.baseline.expected_at(pos)
        s.mu_rev = s.reversals.expected_at(pos)
        s.disp = s.baseline.dispersion(p.rates)
        s.disp_rev = s.reversals.dispersion(p.rates)
        s.warm = s.baseline.warming_up(p.rates)
        mk = s.makeup
        if bucket - mk.refreshed_bucket >= MAKEUP_REFRESH_BUCKETS or (
            not mk.usual and mk.total > 0
        ):
            mk.refresh(
                bucket,
                p.cfg.makeup_coverage,
                p.cfg.makeup_min_events,
                p.cfg.makeup_half_life_buckets,
            )
        s.known = (
            bool(mk.usual)
            and mk.decayed_total(bucket, p.cfg.makeup_half_life_buckets) >= p.cfg.makeup_min_events
        )

    def close_bucket(self, at: float, pos: Position, held: bool = False) -> float:
        """End the open bucket (``at``: its end, ``pos``: its midpoint's profile position).

        ``held``: the global halt held every rule's decisions during the bucket (or ran
        them in shadow); what is missing then is no sign of silence, and nothing to learn
        the baseline from.
        Returns the bucket's anomaly score in [0, 1].
        """
        s, p = self.s, self.p
        cfg = p.cfg
        x, m, c = s.x, s.mu, s.disp
        watched = s.state in WATCHED
        score = 0.0
        g_bucket = glr_up(x, m, c)
        if watched and not s.warm:
            cap_c = p.h_chart * cfg.statistic_cap
            for k, rho in enumerate(p.shifts):
                before = s.charts[k]
                after = min(max(0.0, before + llr(x, m, c, rho)), cap_c)
                if before == 0.0 and after > 0.0:
                    s.onsets[k] = s.bucket
                s.charts[k] = after
            score = max(max(s.charts) / p.h_chart, g_bucket / p.h_burst)
            if max(s.charts) >= p.h_chart:
                self._judge(x, m, at, partial=False)
            self._reversal_test(at)
            if not held:
                self._silence_test(x, m, c, at)
            self._clear_surge_alerts(x, m, g_bucket)
        elif s.warm:
            if s.alerts and x < cfg.warmup_cap_per_bucket:
                s.alerts = [a for a in s.alerts if a not in SURGE_ALERTS]
        else:
            # Paused: nothing is judged, but the score still says how far the bucket was
            # above its expectation (the bucket a surge tripped in scores high, not 0).
            score = g_bucket / p.h_burst
        if watched:
            self._version_chart(x)
        n, out, eout = self.current_makeup()
        if s.state in (State.CLOSED, State.DISABLED, State.SHADOW) and not held:
            # Learn from every bucket outside alerted episodes, with the count clipped
            # at the top of the expected band: a spike moves the baseline little, and a
            # lasting shift is still learned (excluding buckets instead biases a sparse
            # rule's baseline low and can lock it out of learning for good).
            if not s.alerts:
                s.baseline.learn(pos, min(x, _band_top(m, c)), p.rates)
                s.makeup.learn(s.cells, s.bucket, cfg.makeup_half_life_buckets)
                if s.baseline.n % p.rates.day_buckets == 0:
                    s.baseline.normalise()
                    s.reversals.normalise()
            if "reversal_surge" not in s.alerts:
                s.reversals.learn(pos, min(s.rev, _band_top(s.mu_rev, s.disp_rev)), p.rates)
        for lst, v in (
            (s.hist_x, x),
            (s.hist_m, m),
            (s.hist_n, n),
            (s.hist_out, out),
            (s.hist_eout, eout),
            (s.hist_rev, s.rev),
        ):
            lst.append(v)
            if len(lst) > HISTORY_BUCKETS:
                del lst[0]
        return min(score, 1.0)

    def _clear_surge_alerts(self, x: float, m: float, g_bucket: float) -> None:
        """End a surge episode after ``QUIET_BUCKETS`` buckets without excess; the charts
        restart from zero so that a finished wave is not held against the rule."""
        s = self.s
        if not any(a in SURGE_ALERTS for a in s.alerts):
            s.quiet = 0
            return
        s.quiet = s.quiet + 1 if g_bucket < 1.0 else 0
        if s.quiet >= QUIET_BUCKETS:
            s.alerts = [a for a in s.alerts if a not in SURGE_ALERTS]
            s.charts = [0.0] * len(s.charts)
            s.onsets = [s.bucket] * len(s.charts)
            s.quiet = 0

    def _reversal_test(self, at: float) -> None:
        s, p = self.s, self.p
        before = s.rev_chart
        s.rev_chart = min(
            max(0.0, before + llr(s.rev, s.mu_rev, s.disp_rev, p.cfg.reversal_shift)),
            p.h_reversal * p.cfg.statistic_cap,
        )
        if before == 0.0 and s.rev_chart > 0.0:
            s.rev_onset = s.bucket
        if s.rev_chart < p.h_reversal:
            if "reversal_surge" in s.alerts and s.rev_chart < 0.5 * p.h_reversal:
                s.alerts.remove("reversal_surge")
            return
        i = self._window(s.rev_onset)
        observed = sum(s.hist_rev[i:]) + s.rev
        if observed < p.cfg.reversal_min_count:
            return
        expected = sum(self._rev_expected(b) for b in range(s.rev_onset, s.bucket + 1))
        ev = {
            "test": f"cusum_reversals_x{p.cfg.reversal_shift:g}",
            "statistic": round(s.rev_chart, 3),
            "threshold": round(p.h_reversal, 3),
            "observed": observed,
            "expected": round(expected, 4),
            "ratio": round(observed / expected, 3) if expected > 0 else None,
            "onset": to_rfc3339(s.rev_onset * p.bucket_s),
            "window_seconds": at - s.rev_onset * p.bucket_s,
            "rule_version": s.rule_version,
            "config_version": p.config_version,
        }
        self._finding("reversal_surge", ev, at, pause=p.cfg.pause_on_reversals)

    def _rev_expected(self, bucket: int) -> float:
        return self.s.reversals.expected((bucket + 0.5) * self.p.bucket_s)

    def _silence_test(self, x: float, m: float, c: float, at: float) -> None:
        s, p = self.s, self.p
        before = s.silence_chart
        s.silence_chart = min(
            max(0.0, before + llr(x, m, c, p.cfg.silence_shift)),
            p.h_silence * p.cfg.statistic_cap,
        )
        if before == 0.0 and s.silence_chart > 0.0:
            s.silence_onset = s.bucket
        if s.silence_chart == 0.0 and "silent" in s.alerts:
            s.alerts.remove("silent")
        if s.silence_chart >= p.h_silence and p.cfg.alert_on_silence and "silent" not in s.alerts:
            i = self._window(s.silence_onset)
            start = (s.bucket - (len(s.hist_x) - i)) * p.bucket_s
            observed = sum(s.hist_x[i:]) + x
            expected = sum(s.hist_m[i:]) + m
            ev = {
                "test": f"cusum_silence_x{p.cfg.silence_shift:g}",
                "statistic": round(s.silence_chart, 3),
                "threshold": round(p.h_silence, 3),
                "observed": observed,
                "expected": round(expected, 4),
                "ratio": round(observed / expected, 3) if expected > 0 else None,
                "onset": to_rfc3339(start),
                "window_seconds": at - start,
                "rule_version": s.rule_version,
                "config_version": p.config_version,
            }
            self._finding("silent", ev, at, pause=False)
