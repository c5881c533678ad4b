"""Fixtures the agent tests share: a fresh base topic and device id, a deploy-report watcher,
a chunk server and ``start_agent`` (a real ``edgeml agent`` process, stopped afterwards).

Imported by name into a test module (``from agent_fixtures import base, ...``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_support import BROKER, AgentProcess, Watcher, unique_base

from edgeml.agent.chunkserver import ChunkServer
from edgeml.runtime.mqtt_client import BrokerSettings

__all__ = ["base", "device", "server", "start_agent", "watcher"]


@pytest.fixture
def base() -> str:
    return unique_base()


@pytest.fixture
def device() -> str:
    return f"dev-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def watcher(base: str) -> Iterator[Watcher]:
    w = Watcher(base)
    yield w
    w.close()


@pytest.fixture
def server(base: str) -> Iterator[ChunkServer]:
    cs = ChunkServer(BrokerSettings.from_url(BROKER), base).start()
    yield cs
    cs.stop()


@pytest.fixture
def start_agent(tmp_path: Path, base: str, device: str,
                watcher: Watcher) -> Iterator[Callable[..., AgentProcess]]:
    """Start an agent and (unless ``wait_status=False``) wait until its deploy link is
    subscribed (its first ``status`` report)."""
    started: list[AgentProcess] = []

    def start(*args: str, state: Path | None = None, wait_status: bool = True,
              **kwargs: Any) -> AgentProcess:
        since = len(watcher.reports)
        agent = AgentProcess(state or tmp_path / "state", base, device, *args, **kwargs)
        started.append(agent)
        if wait_status:
            watcher.wait("status", device=device, since=since, timeout=30)
        return agent

    yield start
    for agent in started:
        agent.stop()
        agent.read_stderr()
