"""The monitor's own Prometheus families (ingest counters and health gauges)."""

from __future__ import annotations

from edgeml.fleet.exposition import Family, Registry
from edgeml.fleet.writer import WriteResult

__all__ = ["MonitorMetrics"]


class MonitorMetrics:
    """Families registered by every monitor; ``record`` adds one committed batch."""

    def __init__(self, registry: Registry) -> None:
        r = registry
        self.received: Family = r.counter(
            "edgeml_monitor_messages_total", "MQTT messages received, by topic leaf.", ("leaf",))
        self.stored: Family = r.counter(
            "edgeml_monitor_stored_total", "Rows written (new windows, samples, feedback, "
            "state and info updates).", ("kind",))
        self.duplicates: Family = r.counter(
            "edgeml_monitor_duplicates_total", "Redelivered messages already stored.", ("kind",))
        self.quarantined: Family = r.counter(
            "edgeml_monitor_quarantined_total", "Messages kept in quarantine, by reason.",
            ("reason",))
        self.stale_states: Family = r.counter(
            "edgeml_monitor_stale_states_total",
            "$state messages from an older session than the one on record (ignored).")
        self.acked: Family = r.counter(
            "edgeml_monitor_acked_total", "QoS 1 messages acknowledged after their commit.")
        self.batches: Family = r.counter("edgeml_monitor_batches_total", "Transactions committed.")
        self.batch_seconds: Family = r.counter(
            "edgeml_monitor_batch_seconds_total", "Seconds spent writing committed batches.")
        self.db_errors: Family = r.counter(
            "edgeml_monitor_db_errors_total", "Failed attempts to write a batch.")
        self.db_up: Family = r.gauge("edgeml_monitor_db_up", "1 if the last write succeeded.")
        self.mqtt_connected: Family = r.gauge(
            "edgeml_monitor_mqtt_connected", "1 while connected to the broker.")
        self.queue_depth: Family = r.gauge(
            "edgeml_monitor_queue_depth", "Messages received and not yet written.")
        self.lost_windows: Family = r.gauge(
            "edgeml_fleet_lost_windows", "Metrics windows missing (gaps in seq), by fleet.",
            ("fleet",))
        self.db_up.set(None, 1)
        self.mqtt_connected.set(None, 0)

    def record(self, result: WriteResult) -> None:
        for kind, n in result.stored.items():
            self.stored.inc({"kind": kind}, n)
        for kind, n in result.duplicates.items():
            if n:
                self.duplicates.inc({"kind": kind}, n)
        for reason, n in result.quarantined.items():
            self.quarantined.inc({"reason": reason}, n)
        if result.stale_states:
            self.stale_states.inc(amount=result.stale_states)
        self.batches.inc()
        self.batch_seconds.inc(amount=result.seconds)
