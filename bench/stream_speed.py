"""Streaming ingest throughput and latency, against the embedded broker.

Run ``python -m bench.stream_speed``. In one run, on one broker, with the same
events — a large platform's stream (200 rules, 100,000 actions per second of event
time, seeded) — it measures:

1. the reference: a raw aiokafka consumer (no group) reading every partition and
   decoding each value with ``orjson.loads``;
2. one ``detector worker`` process reading the same topic from the beginning:
   events per second from its first consumed event to its last, read off its
   ``detector_events_consumed_total``;
3. latency at half the worker's measured rate: real-time events (event time =
   now) produced at that rate, while a rule goes wrong; the worker's histogram
   ``detector_ingest_to_decision_seconds`` (from the append of a batch's oldest
   event to the moment the state stage has applied the batch and published what it
   decided) gives the p50/p99.

Targets: ingest at least half the raw loop; p99 latency at most 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from detector.broker import EmbeddedBroker
from detector.commands.simulate import write_sample
from detector.stream.app import topic_specs
from detector.stream.settings import Settings
from detector.topics import create_topics

PARTITIONS = 8
STREAM_RATE = 100_000
"""Actions per second of event time in the benchmark stream (a large platform)."""


def platform_stream(
    n: int, seed: int = 5, rules: int = 200, start: float = 0.0, rate: float = STREAM_RATE
) -> list[bytes]:
    """``n`` enforcement actions of a large platform, in event-time order.

    Rule volumes are log-uniform; targets come from a few cells per rule; event time
    advances at ``rate`` actions per second from ``start`` (default: now).
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    weights = np.exp(rng.uniform(0, np.log(5000), rules))
    weights /= weights.sum()
    rule_of = rng.choice(rules, size=n, p=weights)
    ages = rng.choice([3.0, 40.0, 400.0, 2000.0], size=n, p=[0.4, 0.3, 0.2, 0.1])
    strikes = rng.choice([0, 1, 4], size=n, p=[0.3, 0.5, 0.2])
    regions = np.array(["US", "BR", "IN", "DE", "FR", "JP", "NG", "ID"])[rng.integers(0, 8, n)]
    reinstate = rng.random(n) < 0.02
    t0 = start or time.time()
    out = []
    for i in range(n):
        ev = {
            "event_id": f"e{i}",
            "occurred_at": round(t0 + i / rate, 3),
            "rule_id": f"rule-{rule_of[i]:03d}",
            "rule_version": "1",
            "action": "reinstate_account" if reinstate[i] else "deactivate_account",
            "account_id": f"acct-{i * 7919 % 10**9:09d}",
            "account_age_days": float(ages[i]),
            "account_prior_strikes": int(strikes[i]),
            "region": str(regions[i]),
            "source": "automated",
        }
        out.append(orjson.dumps(ev))
    return out


async def produce_all(bootstrap: str, topic: str, values: list[bytes]) -> float:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=20,
        max_batch_size=1024 * 1024,
        max_request_size=8 * 1024 * 1024,
    )
    await producer.start()
    started = time.perf_counter()
    try:
        batch = []
        for i, v in enumerate(values):
            batch.append(await producer.send(topic, v, key=str(i % 9973).encode()))
            if len(batch) >= 50_000:
                await asyncio.gather(*batch)
                batch = []
        await asyncio.gather(*batch)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def raw_loop(bootstrap: str, topic: str, expect: int) -> float:
    """Seconds for a raw consumer to read and decode every event."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        n = 0
        loads = orjson.loads
        started = None
        while n < expect:
            got = await consumer.getmany(timeout_ms=500, max_records=20_000)
            if got and started is None:
                started = time.perf_counter()
            for msgs in got.values():
                for m in msgs:
                    loads(m.value)
                n += len(msgs)
        assert started is not None
        return time.perf_counter() - started
    finally:
        await consumer.stop()


def metric(port: int, name: str) -> dict[str, float]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def consumed(port: int) -> float:
    try:
        return sum(metric(port, "detector_events_consumed_total").values())
    except OSError:
        return 0.0


def start_worker(
    settings_env: dict[str, str], workdir: Path
) -> tuple[subprocess.Popen[bytes], int]:
    from detector.broker import free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETECTOR_")}
    env.update(settings_env)
    env["DETECTOR_WEB_PORT"] = str(port)
    env["DETECTOR_DATA_DIR"] = str(workdir / "data")
    log = (workdir / "worker.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "detector", "worker"], env=env, stdout=log, stderr=log
    )
    return proc, port


async def worker_rate(
    bootstrap: str, names: dict[str, str], expect: int, workdir: Path
) -> tuple[float, subprocess.Popen[bytes], int]:
    env = {
        "DETECTOR_BROKER": f"kafka://{bootstrap}",
        "DETECTOR_SESSION_TIMEOUT": "2",
        "DETECTOR_HEARTBEAT_INTERVAL": "0.5",
        "DETECTOR_LOG_LEVEL": "warning",
        **names,
    }
    proc, port = start_worker(env, workdir)
    first = last = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"the worker exited with code {proc.returncode} (see {workdir}/worker.log)"
            )
        n = consumed(port)
        now = time.perf_counter()
        if n > 0 and first is None:
            first = (now, n)
        if n >= expect:
            last = (now, n)
            break
        await asyncio.sleep(0.05)
    if first is None or last is None:
        raise RuntimeError(f"the worker did not consume everything (see {workdir}/worker.log)")
    rate = (last[1] - first[1]) / (last[0] - first[0])
    return rate, proc, port


async def latency_run(
    bootstrap: str, topic: str, rate: float, seconds: float, port: int
) -> dict[str, float]:
    """Produce real-time events at ``rate`` for ``seconds``; read the worker's histogram."""
    before = metric(port, "detector_ingest_to_decision_seconds_bucket")
    # Built before the clock starts, so that the load generator (same 2-core machine)
    # spends its time sending, not serialising: event time is "now" when each is sent.
    total = int(rate * seconds)
    probe = time.perf_counter()
    platform_stream(20_000, seed=98, rate=rate)
    build = (time.perf_counter() - probe) * total / 20_000
    start = time.time() + 3.0 * build + 2.0
    values = platform_stream(total, seed=99, start=start, rate=rate)
    if time.time() > start:
        raise RuntimeError("building the latency run's events took longer than estimated")
    step = 1.0 / rate
    # Records are put into per-partition batches and stamped just before each batch
    # goes out, so that a record's timestamp is (within a few ms) its append time: the
    # embedded broker ignores LogAppendTime, and the generator shares the machine.
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    try:
        sent = 0
        while time.time() < start:
            await asyncio.sleep(0.001)
        while sent < total:
            due = min(total, int((time.time() - start) / step))
            if due > sent:
                now_ms = int(time.time() * 1000)
                batches = {p: producer.create_batch() for p in range(PARTITIONS)}
                futures = []
                for k in range(sent, due):
                    p = k % PARTITIONS
                    if batches[p].append(key=None, value=values[k], timestamp=now_ms) is None:
                        futures.append(await producer.send_batch(batches[p], topic, partition=p))
                        batches[p] = producer.create_batch()
                        batches[p].append(key=None, value=values[k], timestamp=now_ms)
                futures += [
                    await producer.send_batch(b, topic, partition=p)
                    for p, b in batches.items()
                    if b.record_count()
                ]
                await asyncio.gather(*futures)
                sent = due
            await asyncio.sleep(0.003)
    finally:
        await producer.stop()
    await asyncio.sleep(3)
    after = metric(port, "detector_ingest_to_decision_seconds_bucket")
    buckets = []
    for key, value in after.items():
        le = key.split('le="')[1].split('"')[0]
        buckets.append((math.inf if le == "+Inf" else float(le), value - before.get(key, 0.0)))
    buckets.sort()
    total = buckets[-1][1]
    out = {"batches": total}
    for q in (0.5, 0.99):
        out[f"p{int(q * 100)}"] = next(le for le, c in buckets if c >= q * total)
    return out


async def measure(
    broker: EmbeddedBroker, label: str, values: list[bytes], repeat: int, work: Path
) -> tuple[float, float, subprocess.Popen[bytes], int]:
    """Raw-loop and worker rates on ``values`` (own topics); returns the running worker."""
    app = f"bench-{label}"
    settings = Settings(
        broker=f"kafka://{broker.bootstrap}",
        app_id=app,
        topic_actions=f"{app}.actions",
        topic_dlq=f"{app}.dlq",
        topic_aggregates=f"{app}.aggregates",
        topic_rule_state=f"{app}.state",
        topic_alerts=f"{app}.alerts",
        topic_progress=f"{app}.progress",
        input_partitions=PARTITIONS,
    )
    await create_topics(broker.bootstrap, topic_specs(settings, PARTITIONS))
    await produce_all(broker.bootstrap, settings.topic_actions, values)
    n = len(values)
    raw = sorted(
        [n / await raw_loop(broker.bootstrap, settings.topic_actions, n) for _ in range(repeat)]
    )
    names = {
        "DETECTOR_APP_ID": app,
        "DETECTOR_INPUT_PARTITIONS": str(PARTITIONS),
        "DETECTOR_TOPIC_ACTIONS": settings.topic_actions,
        "DETECTOR_TOPIC_DLQ": settings.topic_dlq,
        "DETECTOR_TOPIC_AGGREGATES": settings.topic_aggregates,
        "DETECTOR_TOPIC_RULE_STATE": settings.topic_rule_state,
        "DETECTOR_TOPIC_ALERTS": settings.topic_alerts,
        "DETECTOR_TOPIC_PROGRESS": settings.topic_progress,
    }
    (work / label).mkdir()
    rate, proc, port = await worker_rate(broker.bootstrap, names, n, work / label)
    print(
        f"{label}: raw loop {', '.join(f'{r:,.0f}' for r in raw)} events/s "
        f"(median {raw[len(raw) // 2]:,.0f}); worker {rate:,.0f} events/s",
        file=sys.stderr,
    )
    return raw[len(raw) // 2], rate, proc, port


async def main_async(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="stream-bench-"))
    stream = platform_stream(args.events, seed=args.seed)
    history = None
    if args.history:
        if not args.file.exists():
            print(f"writing {args.file} ...", file=sys.stderr)
            write_sample(args.file, quiet=True)
        history = args.file.read_bytes().splitlines()
    rows = []
    with EmbeddedBroker() as broker:
        raw_rate, rate, proc, port = await measure(broker, "stream", stream, args.repeat, work)
        try:
            lat = await latency_run(
                broker.bootstrap, "bench-stream.actions", rate / 2, args.latency_seconds, port
            )
        finally:
            proc.terminate()
            proc.wait(60)
        rows.append(
            (
                f"a large platform's stream ({len(stream):,} actions, 200 rules, "
                f"{STREAM_RATE:,}/s of event time)",
                raw_rate,
                rate,
            )
        )
        if history is not None:
            h_raw, h_rate, h_proc, _ = await measure(broker, "history", history, args.repeat, work)
            h_proc.terminate()
            h_proc.wait(60)
            rows.append(
                (
                    f"replaying history ({len(history):,} actions of the sample "
                    "platform, 1.5 days of event time)",
                    h_raw,
                    h_rate,
                )
            )
    print(
        "Streaming benchmark: `python -m bench.stream_speed` (embedded broker, "
        f"{PARTITIONS} partitions, one worker process running both stages)"
    )
    print()
    print(
        "| events | raw aiokafka + orjson.loads (events/s) | detector worker (events/s) | ratio |"
    )
    print("|---|---|---|---|")
    for label, raw, worker in rows:
        print(f"| {label} | {raw:,.0f} | {worker:,.0f} | {worker / raw:.2f} |")
    print()
    print(
        f"Latency at {rate / 2:,.0f} events/s (half the worker's stream rate), "
        f"{args.latency_seconds:g} s of real-time events, {lat['batches']:.0f} batches: "
        f"p50 <= {lat['p50']:g} s, p99 <= {lat['p99']:g} s (histogram bucket bounds)."
    )
    shutil.rmtree(work, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.stream_speed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--events", type=int, default=1_000_000, help="actions in the stream")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument(
        "--history",
        action="store_true",
        help="also replay the sample platform's 1.5 days of history",
    )
    ap.add_argument(
        "--file",
        type=Path,
        default=Path("out/bench/sample-events.jsonl"),
        help="where the sample's actions are written (with --history)",
    )
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--latency-seconds", type=float, default=20.0)
    return asyncio.run(main_async(ap.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
