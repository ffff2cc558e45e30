"""Starting a run on Flower: ``flower-sim`` (the experiment as the ServerApp of a Flower simulation, one
virtual SuperNode per client, each a Ray actor with ``flower.client_cpus`` / ``flower.client_gpus``) and
``flower-deployment`` (the run submitted to a SuperLink with ``flwr run``; its ServerApp runs the
experiment there). Both register a launcher in :data:`fedpeft.runtime.base.RUNTIMES`.

The experiment passes its round loop in (``Launch.run_here``) and how a client's side is built
(``Launch.build_client_side``), so nothing here imports the experiment; the entry points pass the fault
drill (``Launch.client_fault``). Flower is imported only when a launcher runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedpeft.deploy import check_reachable, connection_toml, flower_env, flower_executable, json_string
from fedpeft.runtime.base import RUNTIMES, Launch, RunResult, RuntimeLauncher
from fedpeft.runtime.flower.client import BuildClientSide, ClientFault
from fedpeft.runtime.flower.errors import FlowerConnectionError, FlowerRoundError
from fedpeft.runtime.flower.handlers import HANDLERS, ClientHandlers
from fedpeft.runtime.flower.secagg import secagg_settings, secure_aggregation_mod
from fedpeft.runtime.flower.server import FlowerRuntime
from fedpeft.runtime.local import LocalRuntime


def make_client_app(build: BuildClientSide, fault: ClientFault | None = None) -> Any:
    """fedpeft's ClientApp run in this process: trains and evaluates a client of a run, whose side
    ``build(config_text, node_config)`` builds from the run's configuration and the node's (once per process
    and run), and tells the server which client its node holds: one entry point per message type of the
    handler table (:data:`~fedpeft.runtime.flower.handlers.HANDLERS`).
    ``fault`` wraps each client round (a fault drill; see :data:`~fedpeft.runtime.flower.client.ClientFault`)."""
    from flwr.clientapp import ClientApp

    app = ClientApp(mods=[secure_aggregation_mod])
    handle = ClientHandlers(build, fault)
    for message_type in HANDLERS.names():
        category, _, action = message_type.partition(".")
        getattr(app, category)(action or "default")(handle)
    return app


def connector(grid: Any, job: Launch) -> Callable[[LocalRuntime], FlowerRuntime]:
    """What replaces the experiment's local runtime by a :class:`FlowerRuntime` on ``grid``, once its
    clients' nodes are found."""

    def connect(local: LocalRuntime) -> FlowerRuntime:
        o = job.options
        runtime = FlowerRuntime(grid, local, job.config_text, o["round_timeout"], secagg_settings(o))
        # A simulation's nodes exist from the start: no clock on finding them (a loaded machine starts them slowly).
        runtime.discover(job.n_clients, wait_seconds=None if o["simulated"] else o["connect_timeout"])
        return runtime

    return connect


@RUNTIMES.register("flower-sim")
class FlowerSimLauncher(RuntimeLauncher):
    """Flower's Simulation Engine: one virtual SuperNode (a Ray actor) per client, in this machine."""

    def launch(self, job: Launch) -> RunResult:
        """The run as the ServerApp of a Flower simulation with one SuperNode per client."""
        from flwr.serverapp import ServerApp
        from flwr.simulation import run_simulation

        if job.build_client_side is None:
            raise ValueError("flower-sim needs Launch.build_client_side")
        result: dict[str, Any] = {}
        sim_app = ServerApp()

        @sim_app.main()
        def _main(grid, context) -> None:
            result["out"] = job.run_here(connector(grid, job))

        logging.getLogger("flwr").setLevel(logging.WARNING)
        backend = {
            "client_resources": {"num_cpus": job.options["client_cpus"], "num_gpus": job.options["client_gpus"]},
            "init_args": {"logging_level": "ERROR", "log_to_driver": False},
        }
        try:
            run_simulation(
                server_app=sim_app,
                client_app=make_client_app(job.build_client_side, job.client_fault),
                num_supernodes=job.n_clients,
                backend_config=backend,
            )
        finally:
            import ray

            if ray.is_initialized():  # Flower normally shuts Ray down itself; make sure on every path
                ray.shutdown()
        if "out" not in result:
            raise RuntimeError("the Flower simulation ended without finishing the run (see the log above)")
        return result["out"]


@RUNTIMES.register("flower-deployment")
class FlowerDeploymentLauncher(RuntimeLauncher):
    """A Flower deployment: the run is submitted to the SuperLink at flower.superlink, one SuperNode per client."""

    def launch(self, job: Launch) -> RunResult:
        return deploy(job)


APP_PYPROJECT = """[project]
name = "fedpeft-run"
version = "1.0.0"
description = "One fedpeft run, submitted by fedpeft run with runtime=flower-deployment"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "fedpeft"

[tool.flwr.app.components]
serverapp = "fedpeft.flower_apps:server_app"
clientapp = "fedpeft.flower_client:client_app"

[tool.flwr.app.config]
recipe = "default"
overrides = ""
config = {config}
resume = {resume}
"""


def deploy(job: Launch) -> RunResult:
    """``runtime: flower-deployment``: submit the run to the SuperLink at ``flower.superlink`` with
    ``flwr run`` (the app is a one-file project naming fedpeft's ServerApp and ClientApp, the run's whole
    config in its run config), stream its log, and return (run directory, summary) once it ends. The run
    directory is written by the ServerApp, on the SuperLink's machine; this finds it when that is here."""
    import json
    import subprocess
    import tempfile
    from collections import deque

    superlink, quiet, output, resume_dir = job.options["superlink"], job.quiet, job.output_dir, job.resume_dir
    check_reachable(superlink)
    before = {p.name for p in output.iterdir()} if output.is_dir() else set()
    with tempfile.TemporaryDirectory(prefix="fedpeft-flwr-") as tmp:
        app, home = Path(tmp, "app"), Path(tmp, "home")
        app.mkdir()
        home.mkdir()
        resume = str(Path(resume_dir).resolve()) if resume_dir is not None else ""
        (app / "pyproject.toml").write_text(
            APP_PYPROJECT.format(config=json_string(job.config_text), resume=json_string(resume))
        )
        root = job.options["root_certificates"]
        root = str(Path(root).resolve()) if root else None
        (home / "config.toml").write_text(connection_toml("fedpeft", superlink, root))
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
            f"flwr run could not submit the run to the SuperLink at {superlink} (exit code "
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
            f"the run submitted to the SuperLink at {superlink} ended without a summary in "
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
