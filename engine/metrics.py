"""The engine's Prometheus metrics (SPEC §8), in one place.

Names follow Prometheus conventions: `halflife_` prefix, `_total` counters, base units
(`_seconds`, `_bytes`). Labels are bounded: rule, channel, reason, shard, sink, step,
outcome — never a contact. Every update happens once per batch, not per event (a
metric call costs 1–2 µs).

`serve(port, host)` exposes them; with `--processes N` process i serves on port + i.
The collector has its own registry (engine/collector.py, `halflife_collector_*`).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

EVENTS_IN = Counter("halflife_events_in", "Input lines that were events (blank lines excluded)",
                    registry=REGISTRY)
EVENTS_PROCESSED = Counter("halflife_events_processed", "Events accepted and applied to contact state",
                           registry=REGISTRY)
EVENTS_DEDUPLICATED = Counter("halflife_events_deduplicated", "Events dropped as duplicates (messageId seen)",
                              registry=REGISTRY)
EVENTS_DEAD_LETTERED = Counter("halflife_events_dead_lettered", "Events sent to the dead-letter output, by reason",
                               ["reason"], registry=REGISTRY)
EVENTS_LATE = Counter("halflife_events_late", "Events whose time was below the watermark on arrival",
                      registry=REGISTRY)

TRIGGERS_FIRED = Counter("halflife_triggers_fired", "Trigger records emitted, by rule and channel",
                         ["rule", "channel"], registry=REGISTRY)
TRIGGERS_SUPPRESSED = Counter("halflife_triggers_suppressed",
                              "Firings suppressed, by rule and reason (cooldown, unless, same_time)",
                              ["rule", "reason"], registry=REGISTRY)
TRIGGER_LATENCY = Histogram("halflife_trigger_latency_seconds",
                            "Live mode: wall-clock emission time minus the trigger's event time, by source: "
                            "`event` (fired by an event) or `timer` (includes the rules' lateness by design)",
                            ["source"],
                            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
                            registry=REGISTRY)

WATERMARK = Gauge("halflife_watermark_timestamp_seconds", "The input's watermark (event time), as a Unix time",
                  registry=REGISTRY)
EVENT_TIME_LAG = Gauge("halflife_event_time_lag_seconds", "Wall clock minus the watermark", registry=REGISTRY)
SOURCE_BACKLOG = Gauge("halflife_source_backlog_entries", "Live mode: stream entries not yet read, by shard stream",
                       ["shard"], registry=REGISTRY)
CONTACTS = Gauge("halflife_contacts", "Contacts held in state, by shard", ["shard"], registry=REGISTRY)
PENDING_TIMERS = Gauge("halflife_pending_timers", "Timers armed and not yet fired, by shard", ["shard"],
                       registry=REGISTRY)
STATE_BYTES = Gauge("halflife_state_bytes", "Size of a shard's columnar state (what a snapshot copies)", ["shard"],
                    registry=REGISTRY)

BATCH_DURATION = Histogram("halflife_batch_duration_seconds", "Time to process one batch, by step",
                           ["step"], buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
                           registry=REGISTRY)
SNAPSHOT_DURATION = Histogram("halflife_snapshot_duration_seconds",
                              "Time to take one state snapshot at an epoch end (packing, stream trimming), by step; "
                              "no event moves meanwhile", ["step"],
                              buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
                              registry=REGISTRY)
BATCH_SIZE = Histogram("halflife_batch_size_events", "Events per batch, by step", ["step"],
                       buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000), registry=REGISTRY)

SINK_WRITES = Counter("halflife_sink_writes", "Items written by a sink", ["sink"], registry=REGISTRY)
SINK_ERRORS = Counter("halflife_sink_errors", "Failed sink writes (each is retried)", ["sink"], registry=REGISTRY)
SINK_RETRIES = Counter("halflife_sink_retries", "Sink write retries", ["sink"], registry=REGISTRY)
WEBHOOK_DELIVERIES = Counter("halflife_webhook_deliveries", "Webhook deliveries by channel and outcome "
                             "(delivered, retried, failed)", ["channel", "outcome"], registry=REGISTRY)

SUPPRESSION_REASONS = ("cooldown", "unless", "same_time")
DEAD_LETTER_REASONS = ("oversize", "not_json", "too_deep", "string_too_long",
                       "not_object", "bad_type", "wrong_field_type", "missing_contact",
                       "missing_event", "bad_timestamp", "missing_timestamp")


def declare(rules: list[str], channels: dict[str, tuple[str, ...]]) -> None:
    """Create every labelled series at 0 so dashboards and alerts see them before the first event."""
    for reason in DEAD_LETTER_REASONS:
        EVENTS_DEAD_LETTERED.labels(reason)
    for rule in rules:
        for channel in channels.get(rule, ()):
            TRIGGERS_FIRED.labels(rule, channel)
        for reason in SUPPRESSION_REASONS:
            TRIGGERS_SUPPRESSED.labels(rule, reason)
    for step in ("read", "rules"):
        BATCH_DURATION.labels(step)
        BATCH_SIZE.labels(step)
        SNAPSHOT_DURATION.labels(step)
    for source in ("event", "timer"):
        TRIGGER_LATENCY.labels(source)


def declare_sink(name: str) -> None:
    """A sink's series at 0 from the start, so rates and increases see its first errors."""
    for metric in (SINK_WRITES, SINK_ERRORS, SINK_RETRIES):
        metric.labels(name)


def declare_webhooks(channels: list[str]) -> None:
    for channel in channels:
        for outcome in ("delivered", "retried", "failed"):
            WEBHOOK_DELIVERIES.labels(channel, outcome)


def serve(port: int, host: str = "127.0.0.1") -> None:
    """Serve /metrics on host:port in a daemon thread."""
    start_http_server(port, addr=host, registry=REGISTRY)
