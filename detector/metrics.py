"""Every Prometheus metric of the detector, in one place, on an explicit registry.

Names follow Prometheus conventions: base units (seconds), ``_total`` on
counters (added by prometheus-client), and ``rule_id`` as the only
high-cardinality label. Account ids never appear in a label.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import generate_latest

from detector import __version__
from detector.engine.breaker import State

LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)


class Metrics:
    """The detector's metrics on one registry (a fresh one per app or test)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        # --- health of the pipeline ---
        self.build = Info("detector_build", "Version of the running detector.", registry=r)
        self.build.info({"version": __version__})
        self.events_consumed = Counter(
            "detector_events_consumed",
            "Enforcement actions read from the input topic.",
            ["partition"],
            registry=r,
        )
        self.events_dead_lettered = Counter(
            "detector_events_dead_lettered",
            "Input records sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=r,
        )
        self.late_events = Counter(
            "detector_late_events",
            "Events whose bucket was already closed when their aggregate arrived.",
            registry=r,
        )
        self.batches = Counter(
            "detector_ingest_batches",
            "Ingest batches sent to the state stage.",
            ["kind"],
            registry=r,
        )
        self.duplicate_batches = Counter(
            "detector_duplicate_batches",
            "Ingest batches the state stage had already applied (re-deliveries).",
            registry=r,
        )
        self.aggregates_refetched = Counter(
            "detector_aggregates_refetched",
            "Aggregates messages the state stage read itself because Faust skipped them.",
            registry=r,
        )
        self.batch_gaps = Counter(
            "detector_batch_gaps",
            "Ingest batches that did not continue their partition's applied range.",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "detector_consumer_lag_records",
            "Records not yet consumed, per input partition.",
            ["partition"],
            registry=r,
        )
        self.watermark = Gauge(
            "detector_event_time_watermark_timestamp_seconds",
            "Event time up to which the engine has judged (Unix time).",
            registry=r,
        )
        self.watermark_lag = Gauge(
            "detector_event_time_lag_seconds",
            "Wall-clock time minus the event-time watermark.",
            registry=r,
        )
        self.last_processed = Gauge(
            "detector_last_processed_timestamp_seconds",
            "Wall-clock time of the last successfully processed batch.",
            registry=r,
        )
        self.latency = Histogram(
            "detector_ingest_to_decision_seconds",
            "From an action's append to the input topic to the decision that it triggered.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.broker_reachable = Gauge(
            "detector_broker_reachable",
            "1 while Kafka answers within the outage threshold, else 0.",
            ["stage"],
            registry=r,
        )
        self.broker_outages = Counter(
            "detector_broker_outages",
            "Periods during which Kafka did not answer.",
            ["stage"],
            registry=r,
        )
        self.checkpoints = Counter(
            "detector_checkpoints", "Engine checkpoints written to the state table.", registry=r
        )
        self.checkpoint_bytes = Gauge(
            "detector_checkpoint_bytes", "Size of the last engine checkpoint.", registry=r
        )
        self.commands = Counter(
            "detector_commands",
            "Operator commands, by result and reason.",
            ["result", "reason"],
            registry=r,
        )
        self.affected_accounts = Counter(
            "detector_affected_accounts",
            "Accounts written to the affected-accounts ledger (for review and reinstatement).",
            registry=r,
        )
        self.ledger_entries = Gauge(
            "detector_ledger_entries",
            "Recent deactivations held for the ledger (bounded per rule).",
            registry=r,
        )
        # --- per rule ---
        self.rule_observed = Gauge(
            "detector_rule_deactivations",
            "Deactivations of the rule in the last closed bucket.",
            ["rule_id"],
            registry=r,
        )
        self.rule_expected = Gauge(
            "detector_rule_expected_deactivations",
            "Expected deactivations of the rule in the last closed bucket.",
            ["rule_id"],
            registry=r,
        )
        self.rule_band_upper = Gauge(
            "detector_rule_expected_deactivations_upper",
            "Top of the rule's expected band (3 standard deviations) in the last closed bucket.",
            ["rule_id"],
            registry=r,
        )
        self.rule_score = Gauge(
            "detector_rule_anomaly_score",
            "Anomaly score of the rule's last closed bucket: its strongest surge statistic "
            "over that statistic's threshold, 0 (normal) to 1 (at the threshold or above).",
            ["rule_id"],
            registry=r,
        )
        self.rule_state = Gauge(
            "detector_rule_state",
            "1 for the rule's current breaker state, 0 otherwise.",
            ["rule_id", "state"],
            registry=r,
        )
        self.rule_outside_share = Gauge(
            "detector_rule_outside_population_ratio",
            "Share (0 to 1) of the rule's targets outside its usual population, at its last "
            "finding.",
            ["rule_id"],
            registry=r,
        )
        self.transitions = Counter(
            "detector_rule_transitions",
            "Breaker transitions, by target state and reason.",
            ["rule_id", "to", "reason"],
            registry=r,
        )
        self.alerts = Counter(
            "detector_rule_alerts",
            "Alerts raised without a transition, by reason.",
            ["rule_id", "reason"],
            registry=r,
        )

    def set_rule_state(self, rule_id: str, state: str) -> None:
        """Mark ``state`` as the rule's current state (and every other one as not)."""
        for s in State:
            self.rule_state.labels(rule_id=rule_id, state=s.value).set(1 if s == state else 0)

    def exposition(self) -> bytes:
        """The text exposition format of every metric."""
        return generate_latest(self.registry)
