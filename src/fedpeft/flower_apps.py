"""fedpeft as a Flower app: the ``ServerApp`` a deployment names (``fedpeft.flower_apps:server_app``) and the
client handlers bound to the experiment's node setup. Entry points, like the CLI: the ServerApp's body runs
the experiment with the Flower runtime in place of the local one; the ClientApp a deployment names is the
thin ``fedpeft.flower_client:client_app``, which hands each message to these handlers (in a node's
long-lived worker, or in its own process); ``client_app`` here is the same app for projects that name it. The ClientApp carries the fault drills (``FEDPEFT_INJECT_FAULT``,
:mod:`fedpeft.testing.faults`), inert unless that variable is set on the SuperNode.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from flwr.serverapp import ServerApp

from fedpeft.config.recipes import load_config, validate_config
from fedpeft.config.schema import RunConfig
from fedpeft.experiment.node import client_side
from fedpeft.experiment.resume import resume_config
from fedpeft.experiment.run import launch_job, run_here
from fedpeft.runtime.flower.handlers import ClientHandlers
from fedpeft.runtime.flower.launch import connector, make_client_app
from fedpeft.testing import fault_drill

client_handlers = ClientHandlers(client_side, fault=fault_drill)
client_app = make_client_app(client_side, fault=fault_drill)


def config_from_run_config(run_config: Mapping[str, Any]) -> tuple[RunConfig, Path | None]:
    """The run a deployed ServerApp is asked for: ``config`` (a whole resolved config, as YAML; what
    ``runtime: flower-deployment`` sends), or ``recipe`` plus ``overrides`` (space-separated key=value, as
    ``fedpeft run --set`` takes them; what ``flwr run . --run-config`` sets); ``resume`` continues a run
    directory. The runtime is forced to flower-deployment: the clients are this federation's SuperNodes."""
    text, resume = str(run_config.get("config", "")), str(run_config.get("resume", ""))
    if resume:
        return resume_config(Path(resume), []).model_copy(update={"runtime": "flower-deployment"}), Path(resume)
    if text.strip():
        config = validate_config(yaml.safe_load(text))
    else:
        config = load_config(str(run_config.get("recipe", "default")), str(run_config.get("overrides", "")).split())
    return validate_config({**config.model_dump(mode="json"), "runtime": "flower-deployment"}), None


server_app = ServerApp()


@server_app.main()
def _deployed_main(grid, context) -> None:
    config, resume = config_from_run_config(context.run_config)
    job = launch_job(config, resume, True)
    run_dir, summary = run_here(config, resume, True, connector(grid, job))
    logging.getLogger("flwr").info(
        "fedpeft: %s after %s rounds, final eval %s -> %s",
        summary["status"],
        summary["rounds_completed"],
        summary.get("final_eval"),
        run_dir,
    )
