"""fedpeft as a Flower app: a ClientApp that trains any client of a run from the run's configuration, and
the server side that runs ``experiment.fit`` with a :class:`FlowerRuntime` in place of the local one.

``runtime: flower-sim`` runs both in Flower's Simulation Engine (one virtual SuperNode per client; each
simulated client is a Ray actor with ``flower.client_cpus`` / ``flower.client_gpus``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml
from flwr.clientapp import ClientApp

from fedpeft.config.recipes import dump_config, validate_config
from fedpeft.config.schema import RunConfig
from fedpeft.runtime.flower import ClientSide, FlowerRuntime, client_query, client_train
from fedpeft.runtime.local import LocalRuntime

client_app = ClientApp()


def build_client_side(config_text: str) -> ClientSide:
    """Everything a SuperNode needs for any client of the run: the same setup as the server's (model, the
    seeded split, strategy), whose local runtime then trains the client it is asked for."""
    from fedpeft.experiment.run import setup

    config = validate_config(yaml.safe_load(config_text))
    state = setup(config, Path(config.output.dir))
    return ClientSide(state.runtime, state.strategy.client_hook)


@client_app.train()
def _train(message, context):
    return client_train(message, build_client_side)


@client_app.query()
def _query(message, context):
    return client_query(message, context)


def simulate(config: RunConfig, run: Any) -> tuple[Path, dict[str, Any]]:
    """Run ``run(wrap_runtime)`` (the experiment's round loop) as the ServerApp of a Flower simulation with
    one SuperNode per client; returns what ``run`` returned."""
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    result: dict[str, Any] = {}
    server_app = ServerApp()
    config_text = dump_config(config)

    @server_app.main()
    def _main(grid, context) -> None:
        def wrap(local: LocalRuntime) -> FlowerRuntime:
            runtime = FlowerRuntime(grid, local, config_text, config.flower.round_timeout)
            runtime.discover(config.fl.clients)
            return runtime

        result["out"] = run(wrap)

    logging.getLogger("flwr").setLevel(logging.WARNING)
    backend = {
        "client_resources": {"num_cpus": config.flower.client_cpus, "num_gpus": config.flower.client_gpus},
        "init_args": {"logging_level": "ERROR", "log_to_driver": False},
    }
    try:
        run_simulation(
            server_app=server_app, client_app=client_app, num_supernodes=config.fl.clients, backend_config=backend
        )
    finally:
        import ray

        if ray.is_initialized():  # Flower normally shuts Ray down itself; make sure on every path
            ray.shutdown()
    if "out" not in result:
        raise RuntimeError("the Flower simulation ended without finishing the run (see the log above)")
    return result["out"]
