"""fedpeft as a Flower app: a ClientApp that trains any client of a run from the run's configuration, and
the server side that runs ``experiment.fit`` with a :class:`FlowerRuntime` in place of the local one.

``runtime: flower-sim`` runs both in Flower's Simulation Engine (one virtual SuperNode per client; each
simulated client is a Ray actor with ``flower.client_cpus`` / ``flower.client_gpus``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from fedpeft.config.recipes import dump_config, validate_config
from fedpeft.config.schema import RunConfig
from fedpeft.runtime.flower import ClientSide, FlowerRuntime, client_query, client_train, secure_aggregation_mod
from fedpeft.runtime.local import LocalRuntime

client_app = ClientApp(mods=[secure_aggregation_mod])


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


def serve(grid, config: RunConfig, run: Any) -> Any:
    """The server side of both Flower modes: ``run(wrap_runtime)`` is the experiment's round loop, whose
    local runtime ``wrap_runtime`` replaces by a :class:`FlowerRuntime` on ``grid``."""
    config_text = dump_config(config)

    def wrap(local: LocalRuntime) -> FlowerRuntime:
        f = config.flower
        secagg = None
        if f.secure_aggregation:
            # Flower reads a float as a fraction and an int as a count
            secagg = {
                "num_shares": f.secagg_num_shares if f.secagg_num_shares <= 1 else int(f.secagg_num_shares),
                "reconstruction_threshold": f.secagg_reconstruction_threshold
                if f.secagg_reconstruction_threshold <= 1
                else int(f.secagg_reconstruction_threshold),
                "clipping_range": f.secagg_clipping_range,
                "quantization_range": f.secagg_quantization_range,
            }
        runtime = FlowerRuntime(grid, local, config_text, f.round_timeout, secagg)
        # A simulation's nodes exist from the start: no clock on finding them (a loaded machine starts them slowly).
        simulated = config.runtime == "flower-sim"
        runtime.discover(config.fl.clients, wait_seconds=None if simulated else config.flower.connect_timeout)
        return runtime

    return run(wrap)


def config_from_run_config(run_config: Mapping[str, Any]) -> tuple[RunConfig, Path | None]:
    """The run a deployed ServerApp is asked for: ``config`` (a whole resolved config, as YAML; what
    ``runtime: flower-deployment`` sends), or ``recipe`` plus ``overrides`` (space-separated key=value, as
    ``fedpeft run --set`` takes them; what ``flwr run . --run-config`` sets); ``resume`` continues a run
    directory. The runtime is forced to flower-deployment: the clients are this federation's SuperNodes."""
    from fedpeft.config.recipes import load_config

    text, resume = str(run_config.get("config", "")), str(run_config.get("resume", ""))
    if resume:
        from fedpeft.experiment.run import resume_config

        return resume_config(Path(resume), []).model_copy(update={"runtime": "flower-deployment"}), Path(resume)
    if text.strip():
        config = validate_config(yaml.safe_load(text))
    else:
        config = load_config(str(run_config.get("recipe", "default")), str(run_config.get("overrides", "")).split())
    return validate_config({**config.model_dump(mode="json"), "runtime": "flower-deployment"}), None


server_app = ServerApp()


@server_app.main()
def _deployed_main(grid, context) -> None:
    from fedpeft.experiment.run import _run

    config, resume = config_from_run_config(context.run_config)
    run_dir, summary = serve(grid, config, lambda wrap: _run(config, resume, True, wrap))
    logging.getLogger("flwr").info(
        "fedpeft: %s after %s rounds, final eval %s -> %s",
        summary["status"],
        summary["rounds_completed"],
        summary.get("final_eval"),
        run_dir,
    )


def simulate(config: RunConfig, run: Any) -> tuple[Path, dict[str, Any]]:
    """Run ``run(wrap_runtime)`` (the experiment's round loop) as the ServerApp of a Flower simulation with
    one SuperNode per client; returns what ``run`` returned."""
    from flwr.simulation import run_simulation

    result: dict[str, Any] = {}
    sim_app = ServerApp()

    @sim_app.main()
    def _main(grid, context) -> None:
        result["out"] = serve(grid, config, run)

    logging.getLogger("flwr").setLevel(logging.WARNING)
    backend = {
        "client_resources": {"num_cpus": config.flower.client_cpus, "num_gpus": config.flower.client_gpus},
        "init_args": {"logging_level": "ERROR", "log_to_driver": False},
    }
    try:
        run_simulation(
            server_app=sim_app, client_app=client_app, num_supernodes=config.fl.clients, backend_config=backend
        )
    finally:
        import ray

        if ray.is_initialized():  # Flower normally shuts Ray down itself; make sure on every path
            ray.shutdown()
    if "out" not in result:
        raise RuntimeError("the Flower simulation ended without finishing the run (see the log above)")
    return result["out"]


APP_PYPROJECT = """[project]
name = "fedpeft-run"
version = "1.0.0"
description = "One fedpeft run, submitted by fedpeft run with runtime=flower-deployment"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "fedpeft"

[tool.flwr.app.components]
serverapp = "fedpeft.experiment.flower_app:server_app"
clientapp = "fedpeft.experiment.flower_app:client_app"

[tool.flwr.app.config]
recipe = "default"
overrides = ""
config = {config}
resume = {resume}
"""


def deploy(config: RunConfig, resume_dir: Path | None, quiet: bool = False) -> tuple[Path, dict[str, Any]]:
    """``runtime: flower-deployment``: submit the run to the SuperLink at ``flower.superlink`` with
    ``flwr run`` (the app is a one-file project naming fedpeft's ServerApp and ClientApp, the run's whole
    config in its run config), stream its log, and return (run directory, summary) once it ends. The run
    directory is written by the ServerApp, on the SuperLink's machine; this finds it when that is here."""
    import json
    import subprocess
    import tempfile
    from collections import deque

    from fedpeft.runtime.flower import (
        FlowerConnectionError,
        FlowerRoundError,
        check_reachable,
        connection_toml,
        flower_env,
        flower_executable,
        json_string,
    )

    check_reachable(config.flower.superlink)
    output = Path(config.output.dir).resolve()
    config = config.model_copy(update={"output": config.output.model_copy(update={"dir": str(output)})})
    before = {p.name for p in output.iterdir()} if output.is_dir() else set()
    with tempfile.TemporaryDirectory(prefix="fedpeft-flwr-") as tmp:
        app, home = Path(tmp, "app"), Path(tmp, "home")
        app.mkdir()
        home.mkdir()
        resume = str(Path(resume_dir).resolve()) if resume_dir is not None else ""
        (app / "pyproject.toml").write_text(
            APP_PYPROJECT.format(config=json_string(dump_config(config)), resume=json_string(resume))
        )
        root = config.flower.root_certificates
        root = str(Path(root).resolve()) if root else None
        (home / "config.toml").write_text(connection_toml("fedpeft", config.flower.superlink, root))
        env = {**flower_env(), "FLWR_HOME": str(home)}
        command = [flower_executable("flwr"), "run", str(app), "fedpeft", "--stream"]
        tail: deque[str] = deque(maxlen=40)
        with subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                tail.append(line.rstrip())
                if not quiet:
                    print(line, end="", flush=True)
    if proc.returncode != 0:
        log = "\n".join(tail)
        raise FlowerConnectionError(
            f"flwr run could not submit the run to the SuperLink at {config.flower.superlink} (exit code "
            f"{proc.returncode}; with TLS, flower.root_certificates must name the CA that signed its certificate). "
            f"Its last output:\n{log}"
        )
    run_dir = Path(resume) if resume else None
    if run_dir is None and output.is_dir():
        new = [p for p in output.iterdir() if p.name not in before and (p / "config.yaml").exists()]
        run_dir = max(new, key=lambda p: p.stat().st_mtime) if new else None
    summary_file = run_dir / "summary.json" if run_dir is not None else None
    if summary_file is None or not summary_file.exists():
        log = "\n".join(tail)
        raise FlowerConnectionError(
            f"the run submitted to the SuperLink at {config.flower.superlink} ended without a summary in "
            f"{run_dir or output} (flwr exit code {proc.returncode}). Its last output:\n{log}"
        )
    summary = json.loads(summary_file.read_text())
    if summary.get("status") != "completed":
        log = "\n".join(tail)
        if summary.get("error"):
            raise FlowerRoundError(f"the deployed run {run_dir} ended {summary['status']}: {summary['error']}")
        raise FlowerConnectionError(
            f"the deployed run {run_dir} ended {summary.get('status')}. Its last output:\n{log}"
        )
    return run_dir, summary
