"""Streaming ingest throughput and latency, against the embedded broker.

Run ``python -m bench.stream_speed``. In one run, on one broker, with the same
events (the sample platform's actions, uncompressed):

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


def start_worker(settings_env: dict[str, str], workdir: Path) -> tuple[object, int]:
    import subprocess

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
) -> tuple[float, object, int]:
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
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2)
    await producer.start()
    rules = [f"rule-{i}" for i in range(20)]
    try:
        started = time.perf_counter()
        sent = 0
        while (elapsed := time.perf_counter() - started) < seconds:
            due = int(elapsed * rate)
            futures = []
            now = time.time()
            for k in range(sent, due):
                rule = rules[k % len(rules)]
                ev = {
                    "event_id": f"lat-{k}",
                    "occurred_at": now,
                    "rule_id": rule,
                    "action": "deactivate_account",
                    "account_id": f"a{k}",
                    "account_age_days": 3.0,
                    "account_prior_strikes": 2,
                    "region": "US",
                }
                futures.append(await producer.send(topic, orjson.dumps(ev), key=str(k).encode()))
            sent = due
            if futures:
                await asyncio.gather(*futures)
            await asyncio.sleep(0.01)
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


async def main_async(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="stream-bench-"))
    sample = args.file
    if not sample.exists():
        print(f"writing {sample} ...", file=sys.stderr)
        write_sample(sample, quiet=True)
    values = sample.read_bytes().splitlines()
    if args.events:
        values = values[: args.events]
    n = len(values)
    with EmbeddedBroker() as broker:
        names = {"DETECTOR_APP_ID": "bench", "DETECTOR_INPUT_PARTITIONS": str(PARTITIONS)}
        settings = Settings(
            broker=f"kafka://{broker.bootstrap}", app_id="bench", input_partitions=PARTITIONS
        )
        await create_topics(broker.bootstrap, topic_specs(settings, PARTITIONS))
        produce_s = await produce_all(broker.bootstrap, settings.topic_actions, values)
        raw = [
            n / await raw_loop(broker.bootstrap, settings.topic_actions, n)
            for _ in range(args.repeat)
        ]
        raw_rate = sorted(raw)[len(raw) // 2]
        rate, proc, port = await worker_rate(broker.bootstrap, names, n, work)
        try:
            lat = await latency_run(
                broker.bootstrap, settings.topic_actions, rate / 2, args.latency_seconds, port
            )
        finally:
            proc.terminate()  # type: ignore[attr-defined]
            proc.wait(30)  # type: ignore[attr-defined]
    print(
        f"Streaming benchmark: `python -m bench.stream_speed` ({n:,} events of the sample "
        f"platform, {PARTITIONS} partitions, embedded broker, one worker process)"
    )
    print()
    print("| pass | events/s | ratio to raw |")
    print("|---|---|---|")
    print(
        f"| raw aiokafka consumer + orjson.loads (median of {args.repeat}) | {raw_rate:,.0f} "
        f"| 1.00 |"
    )
    print(
        f"| detector worker ingest (validate, aggregate, send, commit) | {rate:,.0f} | "
        f"{rate / raw_rate:.2f} |"
    )
    print()
    print(
        f"Latency at {rate / 2:,.0f} events/s (half the worker's rate), {args.latency_seconds:g}"
        f" s of real-time events, {lat['batches']:.0f} batches: p50 <= {lat['p50']:g} s, "
        f"p99 <= {lat['p99']:g} s (histogram bucket bounds)."
    )
    print(f"(producing the {n:,} events took {produce_s:.1f} s)")
    shutil.rmtree(work, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.stream_speed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--file", type=Path, default=Path("out/bench/sample-events.jsonl"))
    ap.add_argument("--events", type=int, default=0, help="use only the first N events")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--latency-seconds", type=float, default=20.0)
    return asyncio.run(main_async(ap.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
