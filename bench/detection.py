"""Detection benchmark: how fast, how much damage, how many false pauses.

Run ``python -m bench.detection`` (``--quick`` for a smaller run). It simulates
many rules (0.1 to 500 deactivations per minute, seasonality, overdispersion,
their own target make-up, legitimate spam waves), trains the engine on
``--train-days`` of normal traffic, then

- replays ``--normal-days`` more of normal traffic and counts false pauses,
  alerts and pauses during spam waves;
- runs incident trials per scenario class from the trained state, each with a
  known onset, and measures detection delay and blast radius (wrongful
  deactivations before the pause) for the engine and for two references in the
  same run: the textbook CUSUM lower bound and a Prometheus-style alert.

Everything is seeded; the table is printed as Markdown.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any

import numpy as np
import orjson

from bench.references import (
    oracle_threshold,
    poisson_llr,
    prometheus_alarm,
)
from detector.config import EngineConfig
from detector.engine.core import Engine
from detector.sim.model import (
    Chunk,
    Incident,
    RuleSpec,
    Simulator,
    SpamWave,
    chunk_aggregates,
    random_rules,
)
from detector.wire.events import GLOBAL_RULE_ID
from detector.wire.records import Record

T0 = 1_767_571_200  # 2026-01-05T00:00:00Z, a Monday
DAY = 86_400
WEEK = 7 * DAY
PAUSE_REASONS = frozenset({"extreme_surge", "surge_with_shift", "warmup_cap", "reversal_surge"})


@dataclass(frozen=True)
class Scenario:
    """An incident class of the benchmark."""

    name: str
    multiplier: float
    target: str = "general"
    effect: str = "deactivations"
    ramp_seconds: float = 0.0
    horizon: float = 3 * 3600
    legit: bool = False
    """A legitimate spam wave: the right outcome is no pause."""


SCENARIOS = (
    Scenario("20x", 20.0),
    Scenario("5x", 5.0),
    Scenario("2x sustained", 2.0),
    Scenario("slow ramp to 5x (1 h)", 5.0, ramp_seconds=3600),
    Scenario("tenured accounts 3x", 3.0, target="tenured_clean"),
    Scenario("reversal surge 10x", 10.0, effect="reversals"),
    Scenario("rule goes silent", 0.0, effect="silence", horizon=8 * 3600),
    Scenario("legit spam wave 2-4x", 3.0, legit=True, horizon=3 * 3600),
)


@dataclass
class Trial:
    """One incident with a known onset, and what each detector did."""

    scenario: str
    rule_id: str
    rate: float
    onset: float
    broad: bool = False
    ours_at: float | None = None
    oracle_at: float | None = None
    prom_at: float | None = None
    blast: float = 0.0
    oracle_blast: float = 0.0
    prom_blast: float = 0.0
    total_wrongful: float = 0.0
    paused: bool = False
    alerted: bool = False
    prom_alerted: bool = False


@dataclass
class Context:
    """What every worker process needs (inherited by fork)."""

    cfg: EngineConfig
    rules: list[RuleSpec]
    waves: list[SpamWave]
    seed: int
    train_end: float
    end: float
    snapshot: dict[str, Any]
    minute_counts: np.ndarray  # rules x minutes since T0, filled during training
    normal_days: float


CTX: Context | None = None


def schedule_waves(rules: list[RuleSpec], seed: int, start: float, end: float) -> list[SpamWave]:
    """Legitimate spam waves: about one per rule every five days, 2-4x, 20-120 minutes."""
    rng = np.random.default_rng([seed, 77])
    waves = []
    for spec in rules:
        t = start + rng.exponential(5 * DAY)
        while t < end:
            waves.append(
                SpamWave(
                    spec.rule_id, float(t), float(rng.uniform(1200, 7200)), float(rng.uniform(2, 4))
                )
            )
            t += rng.exponential(5 * DAY)
    return waves


def in_wave(waves: list[SpamWave], rule_id: str, at: float, margin: float = 1800) -> bool:
    """True if ``at`` falls in (or within ``margin`` after) a wave of this rule."""
    return any(
        w.rule_id == rule_id and w.onset <= at <= w.onset + w.duration + margin for w in waves
    )


def run_engine(
    engine: Engine, sim: Simulator, t0: float, t1: float, on_chunk: Any = None
) -> list[Record]:
    """Feed a simulator's traffic in ``[t0, t1)`` through an engine, tick by tick."""
    records: list[Record] = []
    ts = sim.tick_seconds
    for chunk in sim.chunks(t0, t1):
        per_tick: dict[int, list[Any]] = {}
        for spec, ch in chunk:
            if on_chunk is not None:
                on_chunk(spec, ch)
            for agg, _ in chunk_aggregates(spec, ch):
                per_tick.setdefault(agg.tick, []).append(agg)
        for tick in sorted(per_tick):
            for agg in per_tick[tick]:
                engine.add(agg)
            records += engine.advance((tick + 1) * ts)
        end_tick = int(chunk[0][1].ticks[-1]) + 1 if len(chunk[0][1].ticks) else 0
        records += engine.advance(end_tick * ts)
    return records


# ----- training -------------------------------------------------------------------------------
def train(
    cfg: EngineConfig,
    rules: list[RuleSpec],
    waves: list[SpamWave],
    seed: int,
    train_days: float,
    end: float,
) -> tuple[dict[str, Any], np.ndarray, int]:
    """Learn baselines on normal traffic; returns the snapshot, minute counts, pauses."""
    sim = Simulator(rules, seed=seed, start=T0, end=end, waves=waves)
    engine = Engine(cfg)
    minutes = np.zeros((len(rules), int((end - T0) // 60) + 1))
    index = {r.rule_id: i for i, r in enumerate(rules)}

    def count(spec: RuleSpec, ch: Chunk) -> None:
        per_tick = (ch.legit.sum(axis=1) + ch.wrong.sum(axis=1)).astype(float)
        m = ((ch.ticks * sim.tick_seconds - T0) // 60).astype(np.int64)
        np.add.at(minutes[index[spec.rule_id]], m, per_tick)

    train_end = T0 + train_days * DAY
    records = run_engine(engine, sim, T0, train_end, count)
    pauses = sum(1 for r in records if r.is_transition and r.to_state == "open")
    snap = orjson.loads(orjson.dumps(engine.snapshot()))
    return snap, minutes, pauses


# ----- normal traffic -------------------------------------------------------------------------
def normal_run() -> dict[str, Any]:
    """Continue from the trained state over normal traffic; count false pauses and alerts."""
    ctx = CTX
    assert ctx is not None
    sim = Simulator(ctx.rules, seed=ctx.seed, start=T0, end=ctx.end, waves=ctx.waves)
    engine = Engine.restore(ctx.snapshot, ctx.cfg)
    index = {r.rule_id: i for i, r in enumerate(ctx.rules)}
    minutes = ctx.minute_counts

    def count(spec: RuleSpec, ch: Chunk) -> None:
        per_tick = (ch.legit.sum(axis=1)).astype(float)
        m = ((ch.ticks * sim.tick_seconds - T0) // 60).astype(np.int64)
        np.add.at(minutes[index[spec.rule_id]], m, per_tick)

    t1 = ctx.train_end + ctx.normal_days * DAY
    records = run_engine(engine, sim, ctx.train_end, t1, count)
    false_pauses, wave_pauses, globals_, alerts = [], [], [], 0
    for r in records:
        if r.is_transition and r.to_state == "open" and r.from_state == "closed":
            if r.rule_id == GLOBAL_RULE_ID:
                globals_.append(r.to_dict())
            elif in_wave(ctx.waves, r.rule_id, r.at):
                wave_pauses.append(r.to_dict())
            else:
                false_pauses.append(r.to_dict())
        elif r.kind == "alert" and r.reason in ("surge", "silent"):
            alerts += 1
    # The Prometheus-style alert on the same minutes.
    m0 = int((ctx.train_end - T0) // 60)
    m1 = int((t1 - T0) // 60)
    prom_false = prom_wave = 0
    for i, spec in enumerate(ctx.rules):
        counts = minutes[i, m0:m1]
        last_week = minutes[i, m0 - WEEK // 60 : m1 - WEEK // 60]
        start = 0
        while True:
            hit = prometheus_alarm(counts, last_week, start=start)
            if hit is None:
                break
            at = T0 + (m0 + hit + 1) * 60
            if in_wave(ctx.waves, spec.rule_id, at):
                prom_wave += 1
            else:
                prom_false += 1
            start = hit + 60  # one firing per hour at most: an alert stays firing
    waves_in_period = sum(1 for w in ctx.waves if ctx.train_end <= w.onset < t1)
    return {
        "rule_weeks": len(ctx.rules) * ctx.normal_days / 7,
        "false_pauses": false_pauses,
        "wave_pauses": wave_pauses,
        "global_halts": globals_,
        "alerts": alerts,
        "prom_false": prom_false,
        "prom_wave": prom_wave,
        "waves": waves_in_period,
    }


# ----- single-rule incident trials ------------------------------------------------------------
def one_rule_snapshot(snap: dict[str, Any], rule_id: str) -> dict[str, Any]:
    """The trained state of a single rule (no global view)."""
    out = dict(snap)
    out["rules"] = {rule_id: snap["rules"][rule_id]}
    out["global"] = None
    out["recent_trips"] = []
    out["pending"] = {
        t: {r: a for r, a in aggs.items() if r == rule_id} for t, aggs in snap["pending"].items()
    }
    return orjson.loads(orjson.dumps(out))


def _minute_sums(per_tick: np.ndarray, tpm: int) -> np.ndarray:
    n = len(per_tick) // tpm * tpm
    out: np.ndarray = per_tick[:n].reshape(-1, tpm).sum(axis=1)
    return out


def run_trial(scenario: Scenario, spec: RuleSpec, onset: float) -> Trial:
    """One incident on one rule, from the trained state."""
    ctx = CTX
    assert ctx is not None
    cfg = ctx.cfg
    ts = cfg.tick_seconds
    end = onset + scenario.horizon
    waves = [w for w in ctx.waves if w.rule_id == spec.rule_id]
    incidents = []
    if scenario.legit:
        waves = [
            *waves,
            SpamWave(spec.rule_id, onset, scenario.horizon - 1800, scenario.multiplier),
        ]
    else:
        incidents = [
            Incident(
                scenario.name,
                (spec.rule_id,),
                onset,
                scenario.horizon,
                scenario.multiplier,
                scenario.ramp_seconds,
                scenario.target,
                scenario.effect,
            )
        ]
    sim = Simulator(
        [spec], seed=ctx.seed, start=T0, end=end + 3600, incidents=incidents, waves=waves
    )
    engine = Engine.restore(one_rule_snapshot(ctx.snapshot, spec.rule_id), cfg, global_view=False)
    chunks: list[Chunk] = []
    records = run_engine(engine, sim, ctx.train_end, end, lambda _s, ch: chunks.append(ch))
    records += engine.finish()
    cat = {
        name: np.concatenate([getattr(c, name) for c in chunks])
        for name in (
            "legit_rate",
            "base_rate",
            "reversal_rate",
            "base_reversal_rate",
            "normal_rate",
        )
    }
    x = np.concatenate([c.legit.sum(axis=1) + c.wrong.sum(axis=1) for c in chunks]).astype(float)
    wrong = np.concatenate([c.wrong.sum(axis=1) for c in chunks]).astype(float)
    rev = np.concatenate([c.reversals for c in chunks])
    t_start = ctx.train_end
    onset_i = int((onset - t_start) // ts)
    trial = Trial(scenario.name, spec.rule_id, spec.rate_per_min, onset, spec.broad)
    trial.total_wrongful = float(wrong[onset_i:].sum())

    def blast_until(at: float | None) -> float:
        if at is None:
            return trial.total_wrongful
        stop = int((at + cfg.lateness_seconds - t_start) // ts)
        return float(wrong[onset_i : max(onset_i, stop)].sum())

    # --- ours
    for r in records:
        if r.at < onset or r.rule_id != spec.rule_id:
            continue
        if scenario.effect == "silence":
            if r.kind == "alert" and r.reason == "silent" and trial.ours_at is None:
                trial.ours_at = r.at
        elif r.is_transition and r.to_state == "open" and r.reason in PAUSE_REASONS:
            trial.paused = True
            if trial.ours_at is None:
                trial.ours_at = r.at
        elif r.kind == "alert" and r.reason in ("surge", "extreme_surge", "surge_with_shift"):
            trial.alerted = True
    trial.blast = blast_until(trial.ours_at)
    # --- the lower bound
    h = oracle_threshold(ts, cfg.false_pauses_per_rule_month)
    if scenario.effect == "reversals":
        llr = poisson_llr(
            rev, cat["base_reversal_rate"], cat["base_reversal_rate"] * scenario.multiplier
        )
    elif scenario.effect == "silence":
        llr = poisson_llr(x, cat["normal_rate"], cat["normal_rate"] * 0.0)
        h = oracle_threshold(ts, cfg.false_alerts_per_rule_month)
    else:
        mult = scenario.multiplier
        llr = poisson_llr(x, cat["legit_rate"], cat["legit_rate"] + (mult - 1) * cat["base_rate"])
    # The CUSUM runs from the start; only alarms at or after the onset count.
    w = np.cumsum(llr)
    s = w - np.minimum(0.0, np.minimum.accumulate(w))
    after = np.flatnonzero(s[onset_i:] >= h)
    hit = int(after[0]) + onset_i if len(after) and not scenario.legit else None
    trial.oracle_at = None if hit is None else t_start + (hit + 1) * ts
    trial.oracle_blast = blast_until(trial.oracle_at)
    # --- the Prometheus-style alert
    tpm = 60 // ts
    series = rev if scenario.effect == "reversals" else x
    m_onset = int((onset - t_start) // 60)
    lw_sim = Simulator(
        [spec],
        seed=ctx.seed,
        start=T0,
        end=end + 3600,
        waves=[w for w in ctx.waves if w.rule_id == spec.rule_id],
    )
    lw_chunks = [ch for batch in lw_sim.chunks(t_start - WEEK, end - WEEK) for _, ch in batch]
    lw_series = np.concatenate(
        [
            c.reversals
            if scenario.effect == "reversals"
            else (c.legit.sum(axis=1) + c.wrong.sum(axis=1)).astype(float)
            for c in lw_chunks
        ]
    )
    counts = _minute_sums(series, tpm)
    last_week = _minute_sums(lw_series, tpm)
    n = min(len(counts), len(last_week))
    ph = prometheus_alarm(
        counts[:n], last_week[:n], start=m_onset, below=scenario.effect == "silence"
    )
    trial.prom_at = None if ph is None else t_start + (ph + 1) * 60
    trial.prom_alerted = ph is not None
    trial.prom_blast = blast_until(trial.prom_at)
    return trial


def trial_batch(jobs: list[tuple[Scenario, RuleSpec, float]]) -> list[Trial]:
    """Run several trials in one worker process."""
    return [run_trial(sc, spec, onset) for sc, spec, onset in jobs]


# ----- shared failure -------------------------------------------------------------------------
def shared_trial(trial_seed: int) -> dict[str, Any]:
    """30% of the rules go wrong at 3x together: one incident, one global halt expected."""
    ctx = CTX
    assert ctx is not None
    cfg = ctx.cfg
    ts = cfg.tick_seconds
    rng = np.random.default_rng([ctx.seed, 555, trial_seed])
    hit_rules = sorted(
        str(r)
        for r in rng.choice(
            [s.rule_id for s in ctx.rules], size=max(1, round(0.3 * len(ctx.rules))), replace=False
        )
    )
    onset = ctx.train_end + 3600 + float(rng.uniform(0, 3600))
    horizon = 2 * 3600
    end = onset + horizon
    inc = Incident("shared", tuple(hit_rules), onset, horizon, 3.0)
    sim = Simulator(
        ctx.rules, seed=ctx.seed, start=T0, end=end + 3600, incidents=[inc], waves=ctx.waves
    )
    engine = Engine.restore(orjson.loads(orjson.dumps(ctx.snapshot)), cfg)
    per_rule: dict[str, list[Chunk]] = {r: [] for r in hit_rules}

    def keep(spec: RuleSpec, ch: Chunk) -> None:
        if spec.rule_id in per_rule:
            per_rule[spec.rule_id].append(ch)

    records = run_engine(engine, sim, ctx.train_end, end, keep)
    onset_i = int((onset - ctx.train_end) // ts)
    halt = next(
        (
            r.at
            for r in records
            if r.rule_id == GLOBAL_RULE_ID
            and r.is_transition
            and r.to_state == "open"
            and r.at >= onset
        ),
        None,
    )
    own = {}
    for r in records:
        if r.is_transition and r.to_state == "open" and r.at >= onset and r.rule_id in per_rule:
            own.setdefault(r.rule_id, r.at)
    false_pauses = sorted(
        {
            r.rule_id
            for r in records
            if r.is_transition
            and r.to_state == "open"
            and r.rule_id not in per_rule
            and r.rule_id != GLOBAL_RULE_ID
        }
    )
    h = oracle_threshold(ts, cfg.false_pauses_per_rule_month)
    pooled = None
    wrong: dict[str, np.ndarray] = {}
    for rid, chs in per_rule.items():
        x = np.concatenate([c.legit.sum(axis=1) + c.wrong.sum(axis=1) for c in chs]).astype(float)
        lam0 = np.concatenate([c.legit_rate for c in chs])
        lam1 = lam0 + 2.0 * np.concatenate([c.base_rate for c in chs])
        llr = poisson_llr(x, lam0, lam1)
        pooled = llr if pooled is None else pooled + llr
        wrong[rid] = np.concatenate([c.wrong.sum(axis=1) for c in chs]).astype(float)
    assert pooled is not None
    w = np.cumsum(pooled)
    s = w - np.minimum(0.0, np.minimum.accumulate(w))
    after = np.flatnonzero(s[onset_i:] >= h)
    oracle_at = ctx.train_end + (int(after[0]) + onset_i + 1) * ts if len(after) else None

    def blast(rid: str, at: float | None) -> float:
        arr = wrong[rid]
        if at is None:
            return float(arr[onset_i:].sum())
        stop = int((at + cfg.lateness_seconds - ctx.train_end) // ts)
        return float(arr[onset_i : max(stop, onset_i)].sum())

    ours = sum(
        blast(r, min([t for t in (own.get(r), halt) if t is not None], default=None))
        for r in hit_rules
    )
    oracle = sum(blast(r, oracle_at) for r in hit_rules)
    return {
        "onset": onset,
        "rules": len(hit_rules),
        "halt_delay": None if halt is None else halt - onset,
        "oracle_delay": None if oracle_at is None else oracle_at - onset,
        "rules_paused_individually": len(own),
        "blast": ours,
        "oracle_blast": oracle,
        "total_wrongful": sum(float(wrong[r][onset_i:].sum()) for r in hit_rules),
        "false_pauses_other_rules": false_pauses,
    }


# ----- report ---------------------------------------------------------------------------------
def _fmt_delay(v: float | None) -> str:
    if v is None or math.isnan(v):
        return "-"
    return f"{v / 60:.1f} min" if v >= 120 else f"{v:.0f} s"


def _median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


def report(
    trials: list[Trial],
    normal: dict[str, Any],
    shared: list[dict[str, Any]],
    args: argparse.Namespace,
    elapsed: float,
) -> str:
    """The benchmark's tables as Markdown."""
    lines = [
        f"Detection benchmark: `python -m bench.detection{' --quick' if args.quick else ''}` "
        f"(seed {args.seed}; {args.rules} rules; {args.train_days:g} days of training; "
        f"{elapsed:.0f} s)",
        "",
        "| scenario | trials | paused (ours) | median delay: ours / lower bound / Prometheus-style "
        "| blast radius: ours / lower bound / Prometheus-style | ours ÷ bound | Prom ÷ ours |",
        "|---|---|---|---|---|---|---|",
    ]
    for sc in SCENARIOS:
        ts = [t for t in trials if t.scenario == sc.name]
        if not ts:
            continue
        if sc.legit:
            paused = sum(t.paused for t in ts)
            alerted = sum(t.alerted for t in ts)
            prom = sum(t.prom_alerted for t in ts)
            lines.append(
                f"| {sc.name} | {len(ts)} | **{paused} paused** ({alerted} alerted) | - "
                f"| Prometheus-style fired on {prom} | - | - |"
            )
            continue
        caught = [t for t in ts if t.ours_at is not None]
        d_ours = _median([t.ours_at - t.onset for t in caught])
        d_orc = _median([t.oracle_at - t.onset for t in ts if t.oracle_at is not None])
        d_prom = _median([t.prom_at - t.onset for t in ts if t.prom_at is not None])
        b_ours = sum(t.blast for t in ts)
        b_orc = sum(t.oracle_blast for t in ts)
        b_prom = sum(t.prom_blast for t in ts)
        label = "alerted" if sc.effect == "silence" else "paused"
        ratio = f"{b_ours / b_orc:.2f}" if b_orc > 0 else "-"
        prom_ratio = f"{b_prom / b_ours:.1f}" if b_ours > 0 else "-"
        if sc.effect != "deactivations":
            ratio = prom_ratio = "-"
        lines.append(
            f"| {sc.name} | {len(ts)} | {len(caught)} {label} | {_fmt_delay(d_ours)} / "
            f"{_fmt_delay(d_orc)} / {_fmt_delay(d_prom)} | "
            f"{b_ours:.0f} / {b_orc:.0f} / {b_prom:.0f} | {ratio} | {prom_ratio} |"
        )
    for i, sh in enumerate(shared):
        lines.append(
            f"| shared failure: {sh['rules']} rules at 3x (trial {i + 1}) | 1 | global halt "
            f"{'yes' if sh['halt_delay'] is not None else 'no'}, "
            f"{sh['rules_paused_individually']} rules paused on their own | "
            f"{_fmt_delay(sh['halt_delay'])} / {_fmt_delay(sh['oracle_delay'])} (pooled) / - | "
            f"{sh['blast']:.0f} / {sh['oracle_blast']:.0f} / - | "
            f"{sh['blast'] / sh['oracle_blast']:.2f} | - |"
        )
    lines += [
        "",
        "Blast radius by who the rule usually hits. A broad rule hits the platform at large, so "
        "who-is-hit evidence cannot tell its incidents from its spam waves; by the decision "
        "policy a surge there below the extreme ratio is an alert, not a pause.",
        "",
        "| scenario | rules | trials | paused | blast: ours / lower bound | ours ÷ bound |",
        "|---|---|---|---|---|---|",
    ]
    for sc in SCENARIOS:
        if sc.legit or sc.effect != "deactivations":
            continue
        for broad in (False, True):
            ts = [t for t in trials if t.scenario == sc.name and t.broad == broad]
            if not ts:
                continue
            b_ours = sum(t.blast for t in ts)
            b_orc = sum(t.oracle_blast for t in ts)
            lines.append(
                f"| {sc.name} | {'broad' if broad else 'distinctive'} | {len(ts)} | "
                f"{sum(t.paused for t in ts)} | {b_ours:.0f} / {b_orc:.0f} | "
                f"{b_ours / b_orc:.2f} |"
                if b_orc > 0
                else f"| {sc.name} | - | - | - | - | - |"
            )
    two_x = [t for t in trials if t.scenario == "2x sustained" and t.rate >= 10]
    within = sum(1 for t in two_x if t.ours_at is not None and t.ours_at - t.onset <= 900)
    rw = normal["rule_weeks"]
    lines += [
        "",
        f"Normal traffic: {rw:.0f} rule-weeks with {normal['waves']} legitimate spam waves.",
        "",
        "| measure | ours | Prometheus-style | target |",
        "|---|---|---|---|",
        f"| false pauses per 100 rule-weeks | {100 * len(normal['false_pauses']) / rw:.2f} "
        f"({len(normal['false_pauses'])}) | {100 * normal['prom_false'] / rw:.1f} alerts "
        f"({normal['prom_false']}) | <= 1 |",
        f"| pauses during spam waves | {len(normal['wave_pauses'])} of {normal['waves']} | "
        f"{normal['prom_wave']} alerts | 0 |",
        f"| global halts on normal traffic | {len(normal['global_halts'])} | - | 0 |",
        f"| alerts without pause (surge on usual population, silence) | {normal['alerts']} | - "
        f"| - |",
        f"| 2x sustained on rules >= 10/min paused within 15 min | {within} of {len(two_x)} | - "
        f"| all |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its tables."""
    ap = argparse.ArgumentParser(
        prog="python -m bench.detection",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--rules", type=int, default=100, help="simulated rules (default 100)")
    ap.add_argument("--train-days", type=float, default=8.0, help="training days (default 8)")
    ap.add_argument(
        "--normal-days",
        type=float,
        default=14.0,
        help="days of normal traffic checked for false pauses (default 14)",
    )
    ap.add_argument("--trials", type=int, default=16, help="trials per scenario (default 16)")
    ap.add_argument("--shared-trials", type=int, default=3, help="shared-failure trials")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--quick",
        action="store_true",
        help="small run (30 rules, 4 normal days, 6 trials) for a smoke test",
    )
    ap.add_argument("--out", help="also write the Markdown table to this file")
    ap.add_argument("--json", help="write every trial's numbers to this JSON file")
    args = ap.parse_args(argv)
    if args.quick:
        args.rules, args.normal_days, args.trials, args.shared_trials = 30, 4.0, 6, 1
    started = time.monotonic()
    cfg = EngineConfig()
    rules = random_rules(args.rules, args.seed)
    train_end = T0 + args.train_days * DAY
    end = train_end + max(args.normal_days, 2.0) * DAY + 6 * 3600
    waves = schedule_waves(rules, args.seed, T0, end)
    print(f"training {len(rules)} rules on {args.train_days:g} days ...", file=sys.stderr)
    snap, minutes, train_pauses = train(cfg, rules, waves, args.seed, args.train_days, end)
    print(
        f"  trained in {time.monotonic() - started:.0f} s ({train_pauses} pauses while training)",
        file=sys.stderr,
    )
    global CTX
    CTX = Context(cfg, rules, waves, args.seed, train_end, end, snap, minutes, args.normal_days)
    # Trials: rules spread over the volume range; onsets spread over a day.
    ranked = sorted(rules, key=lambda r: r.rate_per_min)
    rng = np.random.default_rng([args.seed, 31])
    jobs = []
    for k, sc in enumerate(SCENARIOS):
        picks = np.linspace(0, len(ranked) - 1, args.trials).round().astype(int)
        for j, i in enumerate(picks):
            onset = train_end + 3600 * (1 + (j * 5 + k * 3) % 22) + float(rng.uniform(0, 3600))
            jobs.append((sc, ranked[int(i)], onset))
    batches = [jobs[i::6] for i in range(6)]
    with ProcessPoolExecutor(max_workers=2, mp_context=get_context("fork")) as pool:
        normal_f = pool.submit(normal_run)
        shared_f = [pool.submit(shared_trial, i) for i in range(args.shared_trials)]
        trial_f = [pool.submit(trial_batch, b) for b in batches]
        trials = [t for f in trial_f for t in f.result()]
        shared = [f.result() for f in shared_f]
        normal = normal_f.result()
    table = report(trials, normal, shared, args, time.monotonic() - started)
    print(table)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(table + "\n")
    if args.json:
        with open(args.json, "wb") as fh:
            fh.write(
                orjson.dumps(
                    {"trials": [t.__dict__ for t in trials], "normal": normal, "shared": shared},
                    option=orjson.OPT_INDENT_2,
                )
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
