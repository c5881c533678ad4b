"""The device agent: A/B model slots, deploys over MQTT, atomic swap, trial, rollback.

Modules (device-safe: stdlib, numpy, onnxruntime, paho-mqtt)::

    protocol     the MQTT deploy protocol (commands, chunk requests, chunks, reports)
    machine      the deploy state machine: transition table, resume table, retry cap
    slots        the state folder: slots a/b, the ``current`` pointer
    transfer     the resumable chunked download into the inactive slot
    install      the checks before a switch (sha256, signature, target/arch, downgrade, self-test)
    trial        the soak after a switch and its health gates
    link         the agent's MQTT connection and its report spool
    deployer     the thread that drives the machine (commands, transfer)
    steps        the local steps after the transfer: verify, switch, trial, commit, roll back
    service      ``run_agent``: recover, serve (edgeml.runtime.service), deploy
    chunkserver  the controller side of the transfer (tests, benchmarks, the fleet)
    config       the config file (JSON or a small YAML subset) and AgentSettings
"""

from __future__ import annotations

from edgeml.agent.config import AgentSettings, load_config
from edgeml.agent.service import AgentInfo, run_agent

__all__ = ["AgentInfo", "AgentSettings", "load_config", "run_agent"]
