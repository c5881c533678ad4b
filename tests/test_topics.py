"""The MQTT topic tree: ids, the device's topics, fleet wildcards and parsing."""

from __future__ import annotations

import pytest

from edgeml.errors import UsageError
from edgeml.runtime.topics import (
    DeviceTopics,
    all_devices_filter,
    default_device_id,
    fleet_filter,
    parse_topic,
    validate_base,
    validate_id,
)


def test_device_topics() -> None:
    t = DeviceTopics.create("edgeml", "plant-3", "pump-07")
    assert t.root == "edgeml/plant-3/pump-07"
    assert t.state == "edgeml/plant-3/pump-07/$state"
    assert t.info == "edgeml/plant-3/pump-07/$info"
    assert t.metrics == "edgeml/plant-3/pump-07/metrics"
    assert t.samples == "edgeml/plant-3/pump-07/samples"
    assert t.feedback == "edgeml/plant-3/pump-07/feedback"
    assert t.feedback_set == "edgeml/plant-3/pump-07/feedback/set"
    assert t.infer == "edgeml/plant-3/pump-07/infer"
    assert t.infer_response == "edgeml/plant-3/pump-07/infer/response"
    assert t.everything() == "edgeml/plant-3/pump-07/#"
    assert t.client_id == "edgeml-plant-3-pump-07"
    assert set(t.as_dict().values()) >= {t.state, t.info, t.metrics, t.infer}


def test_base_topic_is_configurable() -> None:
    t = DeviceTopics.create("site-a/ml", "f", "d")
    assert t.metrics == "site-a/ml/f/d/metrics"


@pytest.mark.parametrize("bad", ["", "Pump", "pump_1", "-pump", "pump-", "a/b", "a+", "#", "é", "x" * 65])
def test_invalid_ids_are_refused(bad: str) -> None:
    with pytest.raises(UsageError, match="device id"):
        DeviceTopics.create("edgeml", "fleet", bad)
    with pytest.raises(UsageError, match="fleet id"):
        validate_id(bad, "fleet id")


@pytest.mark.parametrize("good", ["a", "0", "pump-07", "x" * 64])
def test_valid_ids(good: str) -> None:
    assert validate_id(good) == good


@pytest.mark.parametrize("bad", ["", "/edgeml", "edgeml/", "a//b", "edge+", "edge#", "$SYS", "a b"])
def test_invalid_base_topics(bad: str) -> None:
    with pytest.raises(UsageError, match="base topic"):
        validate_base(bad)


def test_fleet_wildcards() -> None:
    assert fleet_filter("edgeml", "plant-3") == "edgeml/plant-3/+/#"
    assert fleet_filter("edgeml", "plant-3", "$state") == "edgeml/plant-3/+/$state"
    assert all_devices_filter() == "edgeml/+/+/#"
    assert all_devices_filter("edgeml", "metrics") == "edgeml/+/+/metrics"
    with pytest.raises(ValueError, match="unknown topic leaf"):
        fleet_filter("edgeml", "plant-3", "nope")
    with pytest.raises(UsageError):
        fleet_filter("edgeml", "Plant")


def test_parse_topic_round_trips() -> None:
    t = DeviceTopics.create("edgeml", "plant-3", "pump-07")
    for leaf, topic in [("$state", t.state), ("metrics", t.metrics), ("feedback/set", t.feedback_set),
                        ("infer/response", t.infer_response)]:
        assert parse_topic("edgeml", topic) == ("plant-3", "pump-07", leaf)
    assert parse_topic("edgeml", "other/plant-3/pump-07/metrics") is None
    assert parse_topic("edgeml", "edgeml/plant-3/pump-07/unknown") is None
    assert parse_topic("edgeml", "edgeml/plant-3/metrics") is None


def test_default_device_id_is_valid() -> None:
    assert validate_id(default_device_id()) == default_device_id()
