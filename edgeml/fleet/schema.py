"""The tables of the fleet store (SQLAlchemy 2 declarative models).

Devices are keyed by ``(fleet, device)`` as on the topic tree, so a window is written
without looking anything up. The tables::

    devices          one row per device: state (+ the session it came from), current session,
                     model@version from $info, first/last seen
    device_sessions  one row per (device, session) from $info: started_at, the $info payload
    models           models seen (name, version): task, sha256, classes
    metrics_windows  one edgeml.metrics/1 window: unique (fleet, device, session, seq); the
                     columns dashboards and drift query, plus the whole payload (JSON)
    metrics_hourly   windows older than the retention period, rolled up per (device, model, hour)
    window_seqs      per (device, session): first/last seq and windows received; lost windows
                     = last - first + 1 - received (gaps in seq), exact under redelivery
    samples          edgeml.sample/1, unique id
    feedback         edgeml.feedback/1, unique id (the label joined with its sample)
    alerts           open/resolved alerts (kind, device, model, feature, value, threshold)
    quarantine       messages that could not be stored: topic, reason, the (truncated) bytes
    bundles          bundles offered for deploys: sha256, identity, manifest, the whole file
    deployments      one rollout of a bundle to a fleet: stages, gates, state, the stage under way
    deployment_devices  one row per (deployment, device): its stage, state, progress, reason
    deploy_events    every deploy report a device sent (idempotent on its seq)
    retrain_runs     retrainings (manual or triggered by an alert): state, outcome, lineage;
                     at most one running per model (a partial unique index)

Indexes serve "one device over time" (``fleet, device, window_end``) and "the whole fleet
now" (``window_end``, ``received_at``), plus per model version for drift.

Changing a table here needs a migration in ``edgeml/fleet/migrations/versions``: while
nothing has shipped the migrations are 0001 (telemetry) and 0002 (deploys, retraining).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "Alert",
    "Base",
    "BundleBlob",
    "DeployEvent",
    "Deployment",
    "DeploymentDevice",
    "Device",
    "DeviceSession",
    "Feedback",
    "MetricsHourly",
    "MetricsWindow",
    "Model",
    "Quarantine",
    "RetrainRun",
    "Sample",
    "WindowSeqs",
]

# Stable constraint names (Alembic batch mode on SQLite needs named constraints).
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

Json = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
# A document stored and read whole (a window's payload): PostgreSQL ``json`` (validated
# text) costs a quarter of ``jsonb`` at ingest, and nothing queries inside it.
JsonDoc = JSON(none_as_null=True)
# SQLite has no 64-bit autoincrement type other than INTEGER PRIMARY KEY.
Id = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware (SQLite stores naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=timezone.utc) if value.tzinfo is None \
            else value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None \
            else value.astimezone(timezone.utc)


When = UTCDateTime()
Name = String(64)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Device(Base):
    __tablename__ = "devices"

    fleet: Mapped[str] = mapped_column(Name, primary_key=True)
    device: Mapped[str] = mapped_column(Name, primary_key=True)
    state: Mapped[str | None] = mapped_column(String(16))
    state_session: Mapped[int | None] = mapped_column(BigInteger)
    state_at: Mapped[datetime | None] = mapped_column(When)
    session: Mapped[int | None] = mapped_column(BigInteger)
    model_name: Mapped[str | None] = mapped_column(String(128))
    model_version: Mapped[int | None] = mapped_column(Integer)
    first_seen: Mapped[datetime] = mapped_column(When)
    last_seen: Mapped[datetime] = mapped_column(When)

    __table_args__ = (Index("ix_devices_last_seen", "last_seen"),)


class DeviceSession(Base):
    __tablename__ = "device_sessions"

    fleet: Mapped[str] = mapped_column(Name, primary_key=True)
    device: Mapped[str] = mapped_column(Name, primary_key=True)
    session: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    started_at: Mapped[datetime | None] = mapped_column(When)
    model_name: Mapped[str | None] = mapped_column(String(128))
    model_version: Mapped[int | None] = mapped_column(Integer)
    info: Mapped[dict[str, Any] | None] = mapped_column(Json)
    first_seen: Mapped[datetime] = mapped_column(When)


class Model(Base):
    __tablename__ = "models"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    task: Mapped[str | None] = mapped_column(String(32))
    sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[str | None] = mapped_column(String(40))
    classes: Mapped[list[str] | None] = mapped_column(Json)
    # $info "reference": {"profile": the manifest's reference profile, "metrics": holdout}
    reference: Mapped[dict[str, Any] | None] = mapped_column(Json)
    first_seen: Mapped[datetime] = mapped_column(When)


class MetricsWindow(Base):
    __tablename__ = "metrics_windows"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    fleet: Mapped[str] = mapped_column(Name)
    device: Mapped[str] = mapped_column(Name)
    session: Mapped[int] = mapped_column(BigInteger)
    seq: Mapped[int] = mapped_column(BigInteger)
    model_name: Mapped[str | None] = mapped_column(String(128))
    model_version: Mapped[int | None] = mapped_column(Integer)
    window_start: Mapped[datetime | None] = mapped_column(When)
    window_end: Mapped[datetime] = mapped_column(When)
    seconds: Mapped[float | None] = mapped_column(Float)
    requests: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[int] = mapped_column(Integer, default=0)
    rows: Mapped[int] = mapped_column(Integer, default=0)
    latency_mean_ms: Mapped[float | None] = mapped_column(Float)
    p50_ms: Mapped[float | None] = mapped_column(Float)
    p95_ms: Mapped[float | None] = mapped_column(Float)
    p99_ms: Mapped[float | None] = mapped_column(Float)
    latency_max_ms: Mapped[float | None] = mapped_column(Float)
    rss_bytes: Mapped[int | None] = mapped_column(BigInteger)
    cpu_percent: Mapped[float | None] = mapped_column(Float)
    temperature_c: Mapped[float | None] = mapped_column(Float)
    load1: Mapped[float | None] = mapped_column(Float)
    spool_queued: Mapped[int | None] = mapped_column(Integer)
    spool_dropped_total: Mapped[int | None] = mapped_column(BigInteger)
    received_at: Mapped[datetime] = mapped_column(When)
    payload: Mapped[dict[str, Any]] = mapped_column(JsonDoc)
    # the window's drift counts packed by edgeml.fleet.layout.pack_window (int32 little endian)
    bins: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)

    __table_args__ = (
        UniqueConstraint("fleet", "device", "session", "seq", name="uq_metrics_windows_key"),
        Index("ix_metrics_windows_device_time", "fleet", "device", "window_end"),
        Index("ix_metrics_windows_time", "window_end"),
        Index("ix_metrics_windows_model_time", "model_name", "model_version", "window_end"),
    )


class MetricsHourly(Base):
    __tablename__ = "metrics_hourly"

    fleet: Mapped[str] = mapped_column(Name, primary_key=True)
    device: Mapped[str] = mapped_column(Name, primary_key=True)
    model_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    model_version: Mapped[int] = mapped_column(Integer, primary_key=True)
    hour: Mapped[datetime] = mapped_column(When, primary_key=True)
    windows: Mapped[int] = mapped_column(Integer)
    seconds: Mapped[float] = mapped_column(Float)
    requests: Mapped[int] = mapped_column(BigInteger)
    errors: Mapped[int] = mapped_column(BigInteger)
    rows: Mapped[int] = mapped_column(BigInteger)
    p95_ms_max: Mapped[float | None] = mapped_column(Float)
    p99_ms_max: Mapped[float | None] = mapped_column(Float)
    latency_max_ms: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (Index("ix_metrics_hourly_time", "hour"),)


class WindowSeqs(Base):
    __tablename__ = "window_seqs"

    fleet: Mapped[str] = mapped_column(Name, primary_key=True)
    device: Mapped[str] = mapped_column(Name, primary_key=True)
    session: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    first_seq: Mapped[int] = mapped_column(BigInteger)
    last_seq: Mapped[int] = mapped_column(BigInteger)
    received: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(When)


class Sample(Base):
    __tablename__ = "samples"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    fleet: Mapped[str] = mapped_column(Name)
    device: Mapped[str] = mapped_column(Name)
    model_name: Mapped[str | None] = mapped_column(String(128))
    model_version: Mapped[int | None] = mapped_column(Integer)
    ts: Mapped[datetime | None] = mapped_column(When)
    features: Mapped[dict[str, Any] | None] = mapped_column(Json)
    prediction: Mapped[dict[str, Any] | None] = mapped_column(Json)
    received_at: Mapped[datetime] = mapped_column(When)

    __table_args__ = (Index("ix_samples_device_time", "fleet", "device", "ts"),)


class Feedback(Base):
    __tablename__ = "feedback"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    fleet: Mapped[str] = mapped_column(Name)
    device: Mapped[str] = mapped_column(Name)
    model_name: Mapped[str | None] = mapped_column(String(128))
    model_version: Mapped[int | None] = mapped_column(Integer)
    label: Mapped[Any] = mapped_column(Json)
    ts: Mapped[datetime | None] = mapped_column(When)
    sample_ts: Mapped[datetime | None] = mapped_column(When)
    features: Mapped[dict[str, Any] | None] = mapped_column(Json)
    prediction: Mapped[dict[str, Any] | None] = mapped_column(Json)
    received_at: Mapped[datetime] = mapped_column(When)

    __table_args__ = (
        Index("ix_feedback_device_time", "fleet", "device", "ts"),
        Index("ix_feedback_model_time", "model_name", "model_version", "ts"),
    )


class Alert(Base):
    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    severity: Mapped[str] = mapped_column(String(16), default="alert")
    fleet: Mapped[str | None] = mapped_column(Name)
    device: Mapped[str | None] = mapped_column(Name)
    model_name: Mapped[str | None] = mapped_column(String(128))
    model_version: Mapped[int | None] = mapped_column(Integer)
    feature: Mapped[str | None] = mapped_column(String(128))
    value: Mapped[float | None] = mapped_column(Float)
    threshold: Mapped[float | None] = mapped_column(Float)
    window_id: Mapped[int | None] = mapped_column(Id)
    message: Mapped[str | None] = mapped_column(Text)
    opened_at: Mapped[datetime] = mapped_column(When)
    resolved_at: Mapped[datetime | None] = mapped_column(When)
    details: Mapped[dict[str, Any] | None] = mapped_column(Json)

    __table_args__ = (
        Index("ix_alerts_open", "resolved_at", "kind"),
        Index("ix_alerts_device_time", "fleet", "device", "opened_at"),
    )


class Quarantine(Base):
    __tablename__ = "quarantine"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    received_at: Mapped[datetime] = mapped_column(When)
    topic: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str | None] = mapped_column(Text)
    size: Mapped[int] = mapped_column(Integer)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    text: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_quarantine_time", "received_at"),)


# -- over-the-air deploys (edgeml.fleet.deploy) -----------------------------------------------


class BundleBlob(Base):
    """A bundle offered for deploys, whole: any monitor of the group answers chunk requests."""

    __tablename__ = "bundles"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    target: Mapped[str | None] = mapped_column(String(64))
    arch: Mapped[str | None] = mapped_column(String(32))
    size: Mapped[int] = mapped_column(BigInteger)
    manifest: Mapped[dict[str, Any] | None] = mapped_column(Json)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(When)


class Deployment(Base):
    """One rollout. ``state``: running, halted, completed, rolled_back, cancelled.
    ``revision`` grows on every change (compare-and-set: several monitors never conflict)."""

    __tablename__ = "deployments"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    fleet: Mapped[str] = mapped_column(Name)
    bundle_sha256: Mapped[str] = mapped_column(String(64))
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    stages: Mapped[list[float]] = mapped_column(Json)  # cumulative fractions: [0.1, 0.5, 1.0]
    stage: Mapped[int] = mapped_column(Integer, default=0)  # index of the stage under way
    stage_started_at: Mapped[datetime | None] = mapped_column(When)
    soak_until: Mapped[datetime | None] = mapped_column(When)  # the stage's gates judged then
    soak_s: Mapped[float] = mapped_column(Float)
    chunk_size: Mapped[int] = mapped_column(Integer)
    allow_downgrade: Mapped[bool] = mapped_column(Boolean, default=False)
    gates: Mapped[dict[str, Any]] = mapped_column(Json)
    reason: Mapped[str | None] = mapped_column(Text)
    revision: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(When)
    updated_at: Mapped[datetime] = mapped_column(When)
    details: Mapped[dict[str, Any] | None] = mapped_column(Json)  # e.g. the retraining it ships

    __table_args__ = (Index("ix_deployments_state", "state", "fleet"),)


class DeploymentDevice(Base):
    """A device's part in a deployment. ``state``: pending, sent, downloading, verified,
    switched, committed, rolled_back, failed, skipped, rolling_back (asked, not yet reported)."""

    __tablename__ = "deployment_devices"

    deployment_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    fleet: Mapped[str] = mapped_column(Name)
    device: Mapped[str] = mapped_column(Name, primary_key=True)
    stage: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    have: Mapped[int | None] = mapped_column(Integer)
    count: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)
    from_version: Mapped[int | None] = mapped_column(Integer)
    serving_version: Mapped[int | None] = mapped_column(Integer)
    sends: Mapped[int] = mapped_column(Integer, default=0)
    sent_at: Mapped[datetime | None] = mapped_column(When)
    committed_at: Mapped[datetime | None] = mapped_column(When)
    updated_at: Mapped[datetime] = mapped_column(When)

    __table_args__ = (Index("ix_deployment_devices_device", "fleet", "device"),)


class DeployEvent(Base):
    """One ``edgeml.deploy-report/1`` as received (``status`` reports have no seq)."""

    __tablename__ = "deploy_events"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    deployment_id: Mapped[str | None] = mapped_column(String(128))
    fleet: Mapped[str] = mapped_column(Name)
    device: Mapped[str] = mapped_column(Name)
    seq: Mapped[int | None] = mapped_column(BigInteger)
    event: Mapped[str] = mapped_column(String(16))
    state: Mapped[str | None] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime | None] = mapped_column(When)
    received_at: Mapped[datetime] = mapped_column(When)
    payload: Mapped[dict[str, Any]] = mapped_column(JsonDoc)

    __table_args__ = (
        UniqueConstraint("fleet", "device", "deployment_id", "seq", name="uq_deploy_events_key"),
        Index("ix_deploy_events_deployment", "deployment_id", "received_at"),
    )


# -- the retraining loop (edgeml.train.retrain, edgeml.fleet.retrain_trigger) -----------------


class RetrainRun(Base):
    """A retraining. ``state``: running, registered (a challenger), rejected (not better),
    failed, promoted (its rollout completed), halted (its rollout was halted)."""

    __tablename__ = "retrain_runs"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(String(128))
    recipe: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))
    trigger: Mapped[str] = mapped_column(String(32))  # "manual" or the alert kind
    alert_id: Mapped[int | None] = mapped_column(Id)
    host: Mapped[str | None] = mapped_column(String(128))
    pid: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(When)
    finished_at: Mapped[datetime | None] = mapped_column(When)
    version: Mapped[int | None] = mapped_column(Integer)  # the registered challenger's
    deployment_id: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(Text)
    outcome: Mapped[dict[str, Any] | None] = mapped_column(Json)  # comparison, lineage

    __table_args__ = (
        Index("ix_retrain_runs_model", "model_name", "started_at"),
        Index("uq_retrain_runs_one_running", "model_name", unique=True,
              postgresql_where=text("state = 'running'"),
              sqlite_where=text("state = 'running'")),
    )
