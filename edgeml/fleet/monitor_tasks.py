"""The monitor's periodic tasks: hourly roll-up, lost-window gauges, fleet evaluation, and the
automatic retraining trigger (:mod:`edgeml.fleet.retrain_trigger`, with a ``retrain:`` section).

Each is a callable ``task(monitor)`` run by :meth:`Monitor.add_task` on the monitor's
maintenance thread (never on the ingest path).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgeml.fleet.monitor import Monitor

__all__ = ["Evaluation", "add_retrain_task", "lost_windows_task", "retention_task"]


def retention_task(monitor: Monitor) -> None:
    from edgeml.fleet.retention import roll_up

    days = monitor.settings.retain_days
    if days is not None:
        roll_up(monitor.store, days)


def lost_windows_task(monitor: Monitor) -> None:
    from edgeml.fleet.views import lost_windows_by_fleet

    monitor.metrics.lost_windows.replace(
        {(fleet,): float(n) for fleet, n in lost_windows_by_fleet(monitor.store).items()})


class Evaluation:
    """The periodic drift / decay / health evaluation (:mod:`edgeml.fleet.evaluate`)."""

    def __init__(self, monitor: Monitor) -> None:
        from edgeml.fleet.evaluate import EvaluationConfig, References
        from edgeml.fleet.thresholds import load_thresholds

        self.config = EvaluationConfig(load_thresholds(monitor.settings.thresholds),
                                       monitor.settings.base_topic,
                                       lambda topic, payload: monitor.publish(topic, payload),
                                       References())
        self._names: set[str] = set()

    def __call__(self, monitor: Monitor) -> None:
        from datetime import datetime, timezone

        from edgeml.fleet.evaluate import evaluate

        with monitor.store.session() as session:
            result = evaluate(session, datetime.now(timezone.utc), self.config)
        by_name: dict[str, dict[tuple[str, ...], float]] = {}
        helps: dict[str, tuple[str, tuple[str, ...]]] = {}
        for g in result.gauges():
            labels = tuple(sorted(g.labels))
            helps.setdefault(g.name, (g.help, labels))
            by_name.setdefault(g.name, {})[tuple(g.labels[k] for k in labels)] = g.value
        for name in self._names - set(by_name):
            family = monitor.registry.get(name)
            if family is not None:
                family.replace({})
        for name, values in by_name.items():
            help_text, labels = helps[name]
            monitor.registry.gauge(name, help_text, labels).replace(values)
        self._names = set(by_name)


def add_retrain_task(monitor: Monitor, evaluation: Evaluation) -> None:
    """The retraining trigger, when the thresholds file has a ``retrain:`` section."""
    from edgeml.fleet.retrain_trigger import RetrainTrigger

    config = evaluation.config.thresholds.retrain
    if config is not None:
        monitor.add_task(config.interval_s, RetrainTrigger(config, monitor.store.url), "retrain")
