"""The engine: per-rule detectors and the global view, driven by event time.

Drivers (the backtest, the streaming daemon) hand the engine per-rule, per-tick
aggregates with :meth:`Engine.add` and move event time forward with
:meth:`Engine.advance`. A tick is judged once its end is ``lateness_seconds``
behind the watermark; ticks are judged strictly in order and, inside a tick,
rules in id order, so the same aggregates give the same decisions however they
were batched. The engine never reads a clock.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Callable
from typing import Any, NamedTuple

from detector.config import EngineConfig
from detector.engine.baseline import position
from detector.engine.breaker import PAUSED, State, Trigger
from detector.engine.params import Params
from detector.engine.rule import WARMUP_LEVEL_BUCKETS, RuleDetector, RuleState
from detector.errors import StateError
from detector.wire.aggregates import RuleTick
from detector.wire.events import GLOBAL_RULE_ID
from detector.wire.records import ALERT, TRANSITION, Record
from detector.wire.timefmt import to_rfc3339

SNAPSHOT_FORMAT = 1
RULE_TRIPS = frozenset({"extreme_surge", "surge_with_shift", "warmup_cap", "reversal_surge"})


class BucketScore(NamedTuple):
    """One rule's closed bucket: what was seen, what was expected, how anomalous."""

    rule_id: str
    start: float
    observed: float
    expected: float
    dispersion: float
    score: float


BucketHook = Callable[[BucketScore], None]
"""Called per rule (and for ``*``) per closed bucket."""


class GlobalDetector(RuleDetector):
    """The ``*`` view: total deactivations, with make-up summed over the rules."""

    __slots__ = ("rules",)

    def __init__(
        self,
        state: RuleState,
        params: Params,
        emit: Callable[[Record], None],
        rules: dict[str, RuleDetector],
    ) -> None:
        super().__init__(state, params, emit)
        self.rules = rules

    def add(self, agg: RuleTick, at: float) -> None:
        """Count a rule's aggregate into the totals (cells are judged per rule)."""
        s = self.s
        s.x += agg.deactivations
        s.rev += agg.reversals
        s.shadow += agg.shadow
        s.other += agg.other

    def _attribution(self, onset: int, m: float) -> dict[str, Any] | None:
        """A total surge is global only if its excess is spread over several rules.

        One rule's incident also lifts the total; that rule's own detector deals
        with it, and it must not halt every other rule.
        """
        frac = m / self.s.mu if self.s.mu else 1.0
        excess: dict[str, float] = {}
        for rule_id, rule in self.rules.items():
            rs = rule.s
            i = rule._window(onset)
            e = sum(rs.hist_x[i:]) + rs.x - sum(rs.hist_m[i:]) - rs.mu * frac
            if e > 0:
                excess[rule_id] = e
        total = sum(excess.values())
        ranked = sorted(excess.items(), key=lambda kv: (-kv[1], kv[0]))
        cfg = self.p.cfg
        if total <= 0 or len(ranked) < cfg.global_min_rules or ranked[0][1] > 0.5 * total:
            return None
        return {
            "top_rules": [r for r, _ in ranked[:10]],
            "top_rule_share_of_excess": round(ranked[0][1] / total, 4),
        }

    def current_makeup(self) -> tuple[float, float, float]:
        """Sum of the rules' own make-up counts: outside is judged against each rule's usual."""
        n = k = e = 0.0
        for rule in self.rules.values():
            if rule.s.known and rule.s.x:
                n0, k0, e0 = rule.current_makeup()
                n += n0
                k += k0
                e += e0
        return n, k, e


class Engine:
    """Detection over many rules; state is plain data (see :meth:`snapshot`)."""

    def __init__(
        self,
        config: EngineConfig | None = None,
        *,
        on_bucket: BucketHook | None = None,
        global_view: bool = True,
    ) -> None:
        self.config = config or EngineConfig()
        self.params = Params.of(self.config)
        self.on_bucket = on_bucket
        self.global_view = global_view
        self.rules: dict[str, RuleDetector] = {}
        self._order: list[str] = []
        self._out: list[Record] = []
        self.tick: int | None = None
        """Last judged tick (``None`` before the first)."""
        self.bucket: int | None = None
        self.start_bucket = 0
        self.watermark = -math.inf
        self.pending: dict[int, dict[str, RuleTick]] = {}
        self._heads: list[int] = []
        """Heap of the ticks in ``pending``."""
        self.recent_trips: list[tuple[float, str]] = []
        self._timed: set[str] = set()
        """Rules with a pending deadline (cool-down or probe)."""
        self.late_rejected = 0
        self.glob: GlobalDetector | None = None

    # ----- input -----
    def add(self, agg: RuleTick) -> bool:
        """Queue an aggregate; ``False`` if it arrived after its bucket was closed."""
        if self.tick is not None and agg.tick <= self.tick:
            assert self.bucket is not None
            if agg.tick // self.params.tpb != self.bucket:
                self.late_rejected += 1
                return False
            # Late but inside the open bucket: counted, judged with the next tick.
            at = (self.tick + 1) * self.params.tick_s
            self._rule(agg.rule_id, at).add(agg, at)
            if self.glob is not None:
                self.glob.add(agg, at)
            return True
        slot = self.pending.get(agg.tick)
        if slot is None:
            slot = self.pending[agg.tick] = {}
            heapq.heappush(self._heads, agg.tick)
        mine = slot.get(agg.rule_id)
        if mine is None:
            slot[agg.rule_id] = agg
        else:
            # Merge into a copy: the caller's aggregate objects are never changed.
            merged = slot[agg.rule_id] = mine.copy()
            merged.merge(agg)
        return True

    def _rule(self, rule_id: str, at: float) -> RuleDetector:
        rule = self.rules.get(rule_id)
        if rule is None:
            assert self.bucket is not None
            # Rules seen in the engine's first hour existed before it started: no cap.
            capped = self.bucket - self.start_bucket >= WARMUP_LEVEL_BUCKETS
            rule = RuleDetector.new(
                rule_id, self.bucket, at, self.params, self._out.append, capped=capped
            )
            self.rules[rule_id] = rule
            bisect.insort(self._order, rule_id)
        return rule

    # ----- time -----
    def advance(self, watermark: float) -> list[Record]:
        """Judge every tick that ends at least ``lateness`` before ``watermark``."""
        if watermark > self.watermark:
            self.watermark = watermark
        if self.watermark == -math.inf:
            return self._drain()  # no event time yet: nothing to judge
        p = self.params
        last = math.floor((self.watermark - self.config.lateness_seconds) / p.tick_s) - 1
        if self.tick is None:
            if not self.pending:
                return self._drain()
            first = min(self.pending) // p.tpb
            self._start(first)
        assert self.tick is not None and self.bucket is not None
        tpb = p.tpb
        gap_ticks = int(self.config.max_gap_seconds // p.tick_s)
        while self.tick < last:
            bucket_last = (self.bucket + 1) * tpb - 1
            head = self._heads[0] if self._heads else last + 1
            if self.tick == bucket_last - tpb and min(head, last + 1) - self.tick > gap_ticks:
                self._skip_gap(min(head, last + 1) // tpb)
                continue
            nxt = min(bucket_last, last)
            if self._heads and self._heads[0] < nxt:
                nxt = self._heads[0]
            if self._timed:
                # Deadlines are met on their own tick, however the watermark moves.
                nxt = max(self.tick + 1, min(nxt, self._next_deadline()))
            self.tick = nxt
            at = (nxt + 1) * p.tick_s
            mark = len(self._out)
            self._judge_tick(nxt)
            if nxt == bucket_last:
                self._close_bucket()
            # After the bucket closed: a probe ending with a bucket is judged on all of it.
            for rule_id in sorted(self._timed):
                self._target(rule_id, at).check_timers(at)
            if len(self._out) > mark:
                if self.glob is not None:
                    self._many_rules(mark, at)
                self._track(mark)
        return self._drain()

    def _skip_gap(self, bucket: int) -> None:
        """Jump over a stretch of event time in which no rule saw anything.

        Nothing arriving from any rule for ``max_gap_seconds`` means the pipeline was
        down, not that every rule went silent: the empty buckets are neither learned
        from nor judged (which would also take minutes for a gap of days).
        """
        assert self.bucket is not None
        p = self.params
        old = self.bucket
        self.bucket = bucket
        self.tick = bucket * p.tpb - 1
        here = position((bucket + 0.5) * p.bucket_s)
        for rule_id in self._order:
            self.rules[rule_id].open_bucket(bucket, here)
        if self.glob is not None:
            self.glob.open_bucket(bucket, here)
        gap = (bucket - old) * p.bucket_s
        target = self.glob or (self.rules[self._order[0]] if self._order else None)
        if target is not None:
            self._out.append(
                Record(
                    target.s.rule_id,
                    bucket * p.bucket_s,
                    ALERT,
                    target.s.state,
                    target.s.state,
                    "time_gap",
                    {
                        "skipped_seconds": gap,
                        "from": to_rfc3339(old * p.bucket_s),
                        "config_version": p.config_version,
                    },
                )
            )

    def _next_deadline(self) -> int:
        """The first tick that ends at or after the earliest cool-down or probe deadline."""
        ts = self.params.tick_s
        return min(math.ceil(self._target(r, 0.0).s.until / ts) - 1 for r in self._timed)

    def finish(self) -> list[Record]:
        """Judge everything queued, as if the watermark had moved far past it."""
        if not self.pending:
            return self._drain()
        end_tick = max(self.pending)
        tpb = self.params.tpb
        end = ((end_tick // tpb) + 1) * tpb * self.params.tick_s
        return self.advance(end + self.config.lateness_seconds)

    def _start(self, bucket: int) -> None:
        self.bucket = self.start_bucket = bucket
        self.tick = bucket * self.params.tpb - 1
        if self.global_view and self.glob is None:
            at = bucket * self.params.bucket_s
            state = RuleState(
                GLOBAL_RULE_ID,
                bucket,
                since=at,
                cooldown=self.config.cooldown_seconds,
                capped=False,
            )
            self.glob = GlobalDetector(state, self.params, self._out.append, self.rules)
            self.glob.open_bucket(bucket, position((bucket + 0.5) * self.params.bucket_s))

    def _judge_tick(self, tick: int) -> None:
        p = self.params
        at = (tick + 1) * p.tick_s
        aggs = self.pending.pop(tick, None)
        if aggs is not None:
            heapq.heappop(self._heads)
        j = tick - self.bucket * p.tpb + 1  # type: ignore[operator]
        glob = self.glob
        if aggs:
            touched = []
            for rule_id in sorted(aggs):
                agg = aggs[rule_id]
                rule = self._rule(rule_id, at)
                rule.add(agg, at)
                if glob is not None:
                    glob.add(agg, at)
                touched.append(rule)
            for rule in touched:
                rule.on_tick(tick, j, at)
            if glob is not None:
                glob.on_tick(tick, j, at)

    def _track(self, mark: int) -> None:
        """Keep the set of rules with a deadline in step with their transitions."""
        for rec in self._out[mark:]:
            if rec.kind == TRANSITION:
                if self._target(rec.rule_id, rec.at).timed:
                    self._timed.add(rec.rule_id)
                else:
                    self._timed.discard(rec.rule_id)

    def _many_rules(self, mark: int, at: float) -> None:
        """Many rules tripping together is one incident: halt globally."""
        cfg = self.config
        glob = self.glob
        assert glob is not None
        for rec in self._out[mark:]:
            if (
                rec.kind == TRANSITION
                and rec.to_state == State.OPEN
                and rec.reason in RULE_TRIPS
                and rec.rule_id != GLOBAL_RULE_ID
            ):
                self.recent_trips.append((at, rec.rule_id))
        horizon = at - cfg.global_window_seconds
        self.recent_trips = [(t, r) for t, r in self.recent_trips if t > horizon]
        tripped = sorted({r for _, r in self.recent_trips})
        active = sum(1 for r in self.rules.values() if not r.s.warm)
        need = max(cfg.global_min_rules, math.ceil(cfg.global_min_fraction * active))
        if len(tripped) >= need and glob.s.state not in PAUSED:
            ev: dict[str, Any] = {
                "test": "many_rules",
                "rules": tripped,
                "statistic": len(tripped),
                "threshold": need,
                "active_rules": active,
                "window_seconds": cfg.global_window_seconds,
                "config_version": self.params.config_version,
            }
            glob._finding("many_rules", ev, at, pause=True)

    def _close_bucket(self) -> None:
        p = self.params
        assert self.bucket is not None
        end = (self.bucket + 1) * p.bucket_s
        start = self.bucket * p.bucket_s
        hook = self.on_bucket
        here = position(start + p.bucket_s / 2)
        glob = self.glob
        closing = [self.rules[r] for r in self._order]
        # While the global view is paused or probing, every rule's decisions are held or
        # run in shadow: what the rules apply is missing on purpose.
        held = glob is not None and (glob.s.state in PAUSED or glob.s.state == State.HALF_OPEN)
        for rule in [*closing, glob] if glob is not None else closing:
            x, mu, disp = rule.s.x, rule.s.mu, rule.s.disp
            score = rule.close_bucket(end, here, held and rule is not glob)
            if hook is not None:
                hook(BucketScore(rule.s.rule_id, start, x, mu, disp, score))
        self.bucket += 1
        nxt = position(end + p.bucket_s / 2)
        for rule_id in self._order:
            self.rules[rule_id].open_bucket(self.bucket, nxt)
        if glob is not None:
            glob.open_bucket(self.bucket, nxt)

    def _drain(self) -> list[Record]:
        out, self._out[:] = list(self._out), []
        return out

    # ----- operators -----
    def command(
        self,
        rule_id: str,
        trigger: Trigger,
        at: float,
        evidence: dict[str, Any],
        grace_seconds: float = 0.0,
    ) -> list[Record]:
        """Apply an operator trigger to a rule (``*``: the global halt).

        The command takes effect at the engine's own event time, the end of the last
        judged tick; ``at``, when it was issued, is kept in the evidence. Ticks still
        waiting for late events are judged after it, in the new state.
        """
        self._ensure_started(at)
        now = self.now
        mark = len(self._out)
        self._target(rule_id, now).command(
            trigger, now, {**evidence, "issued_at": to_rfc3339(at)}, grace_seconds
        )
        if rule_id == GLOBAL_RULE_ID and trigger == Trigger.OPERATOR_RESUME:
            # The operator has seen the trips behind the halt: they must not halt
            # everything again the moment it is lifted.
            self.recent_trips = []
        self._track(mark)
        return self._drain()

    @property
    def now(self) -> float:
        """The engine's event time: the end of the last judged tick."""
        assert self.tick is not None
        return (self.tick + 1) * self.params.tick_s

    def reset_baseline(self, rule_id: str, at: float, evidence: dict[str, Any]) -> list[Record]:
        """Forget a rule's learned baseline; it warms up again (at the engine's time)."""
        self._ensure_started(at)
        now = self.now
        self._target(rule_id, now).reset_baseline(now, {**evidence, "issued_at": to_rfc3339(at)})
        return self._drain()

    def _ensure_started(self, at: float) -> None:
        if self.tick is None:
            self._start(math.floor(at / self.params.bucket_s))

    def _target(self, rule_id: str, at: float) -> RuleDetector:
        if rule_id == GLOBAL_RULE_ID:
            if self.glob is None:
                raise StateError("this engine has no global view")
            return self.glob
        return self._rule(rule_id, at)

    def _is_timed(self, rule_id: str) -> bool:
        if rule_id == GLOBAL_RULE_ID:
            return self.glob is not None and self.glob.timed
        return self.rules[rule_id].timed

    def state_of(self, rule_id: str) -> RuleState | None:
        """The state of a rule (``*``: global), or ``None`` if never seen."""
        if rule_id == GLOBAL_RULE_ID:
            return self.glob.s if self.glob else None
        rule = self.rules.get(rule_id)
        return rule.s if rule else None

    # ----- persistence -----
    def snapshot(self) -> dict[str, Any]:
        """The whole engine state as plain JSON-able data."""
        return {
            "format": SNAPSHOT_FORMAT,
            "config_version": self.params.config_version,
            "tick": self.tick,
            "bucket": self.bucket,
            "start_bucket": self.start_bucket,
            "watermark": self.watermark if math.isfinite(self.watermark) else None,
            "late_rejected": self.late_rejected,
            "recent_trips": [list(t) for t in self.recent_trips],
            "rules": {r: self.rules[r].s.to_dict() for r in self._order},
            "global": self.glob.s.to_dict() if self.glob else None,
            "pending": {
                str(t): {r: a.to_dict() for r, a in sorted(aggs.items())}
                for t, aggs in sorted(self.pending.items())
            },
        }

    @classmethod
    def restore(
        cls,
        data: dict[str, Any],
        config: EngineConfig | None = None,
        *,
        on_bucket: BucketHook | None = None,
        global_view: bool = True,
    ) -> Engine:
        """Rebuild an engine from :meth:`snapshot` output."""
        if data.get("format") != SNAPSHOT_FORMAT:
            raise StateError(f"unknown snapshot format {data.get('format')!r}")
        eng = cls(config, on_bucket=on_bucket, global_view=global_view)
        try:
            eng.tick = data["tick"]
            eng.bucket = data["bucket"]
            eng.start_bucket = int(data["start_bucket"])
            wm = data["watermark"]
            eng.watermark = -math.inf if wm is None else float(wm)
            eng.late_rejected = int(data["late_rejected"])
            eng.recent_trips = [(float(t), str(r)) for t, r in data["recent_trips"]]
            for rule_id, state in data["rules"].items():
                eng.rules[rule_id] = RuleDetector(
                    RuleState.from_dict(state), eng.params, eng._out.append
                )
            eng._order = sorted(eng.rules)
            if global_view and data["global"] is not None:
                eng.glob = GlobalDetector(
                    RuleState.from_dict(data["global"]), eng.params, eng._out.append, eng.rules
                )
            eng._timed = {r for r in [*eng.rules, GLOBAL_RULE_ID] if eng._is_timed(r)}
            for t, aggs in data["pending"].items():
                eng.pending[int(t)] = {r: RuleTick.from_dict(a) for r, a in aggs.items()}
            eng._heads = sorted(eng.pending)
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"snapshot is malformed: {exc!r}") from None
        return eng
