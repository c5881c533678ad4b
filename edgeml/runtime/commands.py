"""Commands a device receives over MQTT: inference requests and feedback labels.

Both run in the telemetry agent's thread (never in paho's network thread).

Inference, on ``<root>/infer``. Body: ``{"instances": [{feature: value}, ...]}`` (rows) or
``{"columns": {feature: [values]}}``, or a bare list of rows. The reply goes to:

1. the MQTT v5 ``ResponseTopic`` property, echoing the ``CorrelationData`` property; else
2. the body's ``"reply_to"`` field (the MQTT 3.1.1 fallback: e.g. the embedded broker); else
3. ``<root>/infer/response``.

A body ``"correlation_id"`` is echoed in the reply body (useful under 3.1.1, where there
are no properties). Replies: ``{"status": "ok", ...predictions}`` or ``{"status": "error",
"error": message}`` (schema ``edgeml.infer.response/1``). Reply topics with wildcards or
starting with ``$`` are refused; restrict the rest with broker ACLs.

Feedback, on ``<root>/feedback/set``: ``{"id": <sample id>, "label": <str|number|bool>}``.
A known id is joined with its captured sample and published (spooled) on ``<root>/feedback``
as ``edgeml.feedback/1``; an unknown id is counted as rejected. If the command names a reply
topic (as above), it gets ``{"status": "ok"|"error", ...}`` too.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

import paho.mqtt.client as mqtt

from edgeml.errors import EdgeMLError, InputError
from edgeml.runtime import payloads

__all__ = ["CommandHandler"]

log = logging.getLogger(__name__)

_COUNTS = ("feedback_accepted", "feedback_rejected")
ENDPOINT = "mqtt/infer"  # how MQTT inference appears in RuntimeStats requests/errors


def _valid_reply_topic(topic: Any) -> bool:
    return (
        isinstance(topic, str)
        and 0 < len(topic.encode()) < 65536
        and not topic.startswith("$")
        and "+" not in topic
        and "#" not in topic
        and "\x00" not in topic
    )


class CommandHandler:
    """Routes ``infer`` and ``feedback/set`` messages of one :class:`DeviceAgent`."""

    def __init__(self, agent: Any, max_batch: int = 1024) -> None:
        self.agent = agent
        self.max_batch = max_batch
        self._counts = dict.fromkeys(_COUNTS, 0)

    def take_counts(self) -> dict[str, int]:
        """Counts since the last call (one metrics window)."""
        counts, self._counts = self._counts, dict.fromkeys(_COUNTS, 0)
        return counts

    def handle(self, message: mqtt.MQTTMessage) -> None:
        topics = self.agent.topics
        if message.topic == topics.infer:
            self._infer(message)
        elif message.topic == topics.feedback_set:
            self._feedback(message)

    # -- helpers --------------------------------------------------------------------

    def _parse(self, message: mqtt.MQTTMessage) -> tuple[Any, str | None, bytes | None, Any, str | None]:
        """(body, reply topic, correlation data, correlation id, parse error)."""
        props = message.properties
        reply_to = getattr(props, "ResponseTopic", None) if props is not None else None
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        try:
            body = json.loads(message.payload)
        except (ValueError, UnicodeDecodeError) as exc:
            return None, reply_to, correlation, None, f"request is not valid JSON: {exc}"
        correlation_id = None
        if isinstance(body, dict):
            reply_to = reply_to or body.get("reply_to")
            correlation_id = body.get("correlation_id")
        return body, reply_to, correlation, correlation_id, None

    def _reply(self, topic: Any, body: dict[str, Any], correlation: bytes | None,
               correlation_id: Any) -> None:
        if not _valid_reply_topic(topic):
            log.warning("not replying to an invalid reply topic %r", topic)
            return
        if correlation_id is not None:
            body["correlation_id"] = correlation_id
        self.agent.publish_reply(topic, body, correlation)

    # -- inference ------------------------------------------------------------------

    def _infer(self, message: mqtt.MQTTMessage) -> None:
        stats = self.agent.stats
        body, reply_to, correlation, correlation_id, error = self._parse(message)
        reply_to = reply_to or self.agent.topics.infer_response
        if error is not None:
            stats.record_error(ENDPOINT, "json")
        else:
            try:
                reply = payloads.infer_ok(self.agent, self._predict(body))
            except InputError as exc:
                stats.record_error(ENDPOINT, "input")
                error = str(exc)
            except EdgeMLError as exc:
                stats.record_error(ENDPOINT, "runtime")
                error = str(exc)
            except Exception as exc:  # a bug: answer, log, go on
                log.exception("MQTT inference failed")
                stats.record_error(ENDPOINT, "internal")
                error = f"internal error: {type(exc).__name__}"
        if error is not None:
            reply = payloads.infer_error(error)
        self._reply(reply_to, reply, correlation, correlation_id)

    def _predict(self, body: Any) -> dict[str, Any]:
        if isinstance(body, list):
            data: Any = body
        elif isinstance(body, dict) and "instances" in body:
            data = body["instances"]
        elif isinstance(body, dict) and "columns" in body:
            data = body["columns"]
        else:
            raise InputError('expected {"instances": [{feature: value}, ...]} or {"columns": {...}}')
        rows = len(data) if isinstance(data, list) else _column_length(data)
        if rows > self.max_batch:
            raise InputError(f"batch of {rows} rows is larger than the limit of {self.max_batch}")
        predictor = self.agent.predictor
        started = time.perf_counter()
        feeds = predictor.feeds(data)
        prediction = predictor.run(feeds)
        result: dict[str, Any] = prediction.to_dict()
        # RuntimeStats counts it and calls its observers (the sampler among them).
        self.agent.stats.record(ENDPOINT, time.perf_counter() - started, feeds, prediction,
                                source="mqtt")
        return result

    # -- feedback -------------------------------------------------------------------

    def _feedback(self, message: mqtt.MQTTMessage) -> None:
        body, reply_to, correlation, correlation_id, error = self._parse(message)
        label: Any = None
        if error is None:
            if not isinstance(body, dict) or not isinstance(body.get("id"), str):
                error = 'feedback must be {"id": "<sample id>", "label": ...}'
            else:
                label = body.get("label")
                if label is None or isinstance(label, (dict, list)) or (
                    isinstance(label, float) and not math.isfinite(label)
                ):
                    error = "feedback label must be a string, a number or a boolean"
        record = None
        if error is None:
            record = self.agent.spool.get_sample(body["id"])
            if record is None:
                error = f"unknown sample id {body['id']!r} (not captured here, or too old)"
        if error is not None or record is None:
            self._counts["feedback_rejected"] += 1
            log.warning("feedback rejected: %s", error)
            if reply_to:
                self._reply(reply_to, {"status": "error", "error": error}, correlation, correlation_id)
            return
        self._counts["feedback_accepted"] += 1
        self.agent.spool_message(self.agent.topics.feedback, payloads.feedback(self.agent, record, label))
        if reply_to:
            self._reply(reply_to, {"status": "ok", "id": record["id"]}, correlation, correlation_id)


def _column_length(data: Any) -> int:
    if isinstance(data, dict):
        for values in data.values():
            return len(values) if isinstance(values, list) else 0
    return 0
