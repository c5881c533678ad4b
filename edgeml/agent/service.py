"""``edgeml agent``: recover, serve the current slot with the runtime's service, take deploys.

:func:`run_agent` locks the state folder, installs ``--bundle`` as the first slot when there
is none, applies the deploy resume table (a version left on trial is rolled back *before*
anything is served), loads the current slot into a
:class:`~edgeml.runtime.holder.ModelHolder` and hands it to
:func:`edgeml.runtime.service.serve` (the same HTTP server and telemetry as ``edgeml
serve``; telemetry spooled in ``<state>/spool``). The deployer thread swaps the holder's
model when a deployment switches or rolls back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from edgeml.agent.config import AgentSettings
from edgeml.agent.deployer import Deployer
from edgeml.agent.slots import StateDir
from edgeml.agent.trial import MeteredStats
from edgeml.runtime.holder import ModelHolder
from edgeml.runtime.service import ServiceInfo, serve

__all__ = ["AgentInfo", "run_agent"]


@dataclass(frozen=True)
class AgentInfo:
    """What the agent tells its caller once it serves (the CLI prints it)."""

    service: ServiceInfo
    slot: str
    state_dir: str
    deploy_topics: dict[str, str]
    recovered: str | None  # the deploy state found on start (None: idle)


def run_agent(settings: AgentSettings,
              on_ready: Callable[[AgentInfo], None] | None = None) -> None:
    """Run the agent until SIGTERM or SIGINT."""
    from edgeml.runtime.predictor import Predictor

    state = StateDir(settings.state_dir).open()
    deployer: Deployer | None = None
    try:
        deployer = Deployer(settings, state)
        found = deployer.record.state
        if settings.bundle is not None:
            deployer.seed(settings.bundle)
        deployer.recover()
        path = deployer.serving_path()
        predictor = Predictor(path, intra_op_threads=settings.serve.intra_op_threads)
        deployer.holder = ModelHolder(predictor, MeteredStats(predictor.manifest,
                                                              sha256=predictor.sha256))
        telemetry = replace(settings.serve.telemetry, spool_dir=state.spool)
        serve_settings = replace(settings.serve, telemetry=telemetry)
        t = deployer.topics
        topics = {"deploy": t.deploy, "deploy_set": t.deploy_set,
                  "deploy_chunks": t.deploy_chunks, "deploy_chunks_get": t.deploy_chunks_get}

        def ready(info: ServiceInfo) -> None:
            assert deployer is not None
            deployer.start()
            if on_ready is not None:
                on_ready(AgentInfo(info, str(deployer.serving()["slot"]), str(state.root),
                                   topics, None if found == "idle" else found))

        serve(deployer.holder, serve_settings, on_ready=ready)
    finally:
        if deployer is not None:
            deployer.stop()
        state.close()
