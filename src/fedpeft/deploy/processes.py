"""Starting Flower's processes and reaching them: the ``flower-superlink`` and ``flower-supernode`` command
lines fedpeft's ``superlink`` / ``supernode`` commands run, the environment they run in (this Python
environment's Flower, not another on PATH), the Flower CLI's connection entry for ``flwr run``, and the
reachability check that names the SuperLink's address before anything is submitted.

Standard library only, and nothing above it: the runtime submitting a run and the CLI both use it.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

from fedpeft.errors import FedpeftError

PARTITION_KEY = "partition-id"
"""The node-config key naming the client a SuperNode holds (the Simulation Engine numbers its virtual nodes
so; a deployed SuperNode is started with ``--node-config partition-id=N``)."""

WORKER_KEY = "worker"
"""The node-config key naming the Unix socket of the SuperNode's node worker (set by ``fedpeft supernode``;
without it the ClientApp handles each message in Flower's own ClientApp process)."""

NODE_OPTIONS = {
    "data-file": "--data",
    "eval-file": "--eval-data",
    "schema": "--schema",
    "device": "--device",
    "micro-batch-size": "--micro-batch-size",
    "gradient-checkpointing": "--gradient-checkpointing",
}
"""The node-config keys ``fedpeft supernode`` sets, and the option that sets each (a bool's is a
``--X/--no-X`` pair)."""


class FlowerConnectionError(FedpeftError, RuntimeError):
    """A Flower process or the SuperLink cannot be started, reached or submitted to."""


def flower_executable(name: str) -> str:
    """A Flower command (flwr, flower-superlink, ...) of this Python environment, not another on PATH."""
    import shutil

    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        raise FlowerConnectionError(f"{name} is not installed in this environment; pip install 'flwr>=1.41'")
    return found


SUPEREXEC_POLL = ("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.2")
"""How often Flower's flower-superexec looks for a task to start (its default, 1 s, is up to a second more
per message on every node); a value already in the environment wins."""


def flower_env() -> dict[str, str]:
    """The environment for Flower's processes: this environment's bin first (the SuperLink and SuperNodes
    start flower-superexec, flwr-serverapp and flwr-clientapp by name), and :data:`SUPEREXEC_POLL`."""

    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault(*SUPEREXEC_POLL)
    return env


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise FlowerConnectionError(f"flower.superlink={address!r} is not host:port (e.g. 127.0.0.1:8000)")
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail early, naming the address, when nothing listens at the SuperLink's address."""

    host, port = split_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as err:
        raise FlowerConnectionError(
            f"SuperLink unreachable at {address} ({err.strerror or err}). Check that a SuperLink runs there "
            f"(fedpeft superlink --port {port}), that flower.superlink names its host and HTTP port, and that no "
            "firewall blocks the port"
        ) from None


def superlink_command(
    host: str = "127.0.0.1",
    port: int = 8000,
    certificates: tuple[str, str, str] | None = None,
    database: str | None = None,
    supernode_auth: bool = False,
) -> list[str]:
    """flower-superlink with fedpeft's defaults: apps run in this environment (no per-run dependency
    install); TLS when ``certificates`` = (CA certificate, server certificate, server key), else insecure."""
    cmd = [flower_executable("flower-superlink"), "--host", host, "--port", str(port)]
    cmd.append("--disable-runtime-dependency-installation")
    if certificates is None:
        cmd.append("--insecure")
    else:
        ca, cert, key = certificates
        cmd += ["--ssl-ca-certfile", ca, "--ssl-certfile", cert, "--ssl-keyfile", key]
    if database is not None:
        cmd += ["--database", database]
    if supernode_auth:
        cmd.append("--enable-supernode-auth")
    return cmd


def supernode_command(
    superlink: str,
    partition_id: int,
    num_partitions: int,
    port: int = 9094,
    root_certificates: str | None = None,
    auth_private_key: str | None = None,
    max_wait_time: float | None = None,
    node_config: Mapping[str, str | int | bool] | None = None,
) -> list[str]:
    """flower-supernode holding client ``partition_id`` of ``num_partitions``; ``port`` is its local
    ClientApp API (one per SuperNode on a machine); ``node_config`` adds keys to its node config (the
    node's own data and settings, :data:`NODE_OPTIONS`; its worker's socket, :data:`WORKER_KEY`)."""
    split_address(superlink)
    if not 0 <= partition_id < num_partitions:
        raise FlowerConnectionError(f"partition id {partition_id} is not in 0..{num_partitions - 1}")
    # Flower's flower-supernode, through fedpeft.deploy.node_loop: its idle waits shortened (see there).
    cmd = [sys.executable, "-m", "fedpeft.deploy.node_loop", "--superlink", superlink, "--port", str(port)]
    config = {PARTITION_KEY: partition_id, "num-partitions": num_partitions, **(node_config or {})}
    cmd += ["--node-config", node_config_arg(config)]
    cmd += ["--insecure"] if root_certificates is None else ["--root-certificates", root_certificates]
    if auth_private_key is not None:
        cmd += ["--auth-supernode-private-key", auth_private_key]
    if max_wait_time is not None:
        cmd += ["--max-wait-time", str(max_wait_time)]
    return cmd


def node_config_arg(config: Mapping[str, str | int | float | bool]) -> str:
    """``config`` as flower-supernode's ``--node-config`` value: space-separated ``key=value`` that Flower
    parses as TOML (strings quoted: a literal ``'...'`` string, or an escaped ``"..."`` one when the value
    holds a single quote; a value with both quotes cannot be expressed)."""
    return " ".join(f"{key}={_node_config_value(key, value)}" for key, value in config.items())


def _node_config_value(key: str, value: str | int | float | bool) -> str:
    if not key or not all(c.isalnum() or c in "-_" for c in key):
        raise FedpeftError(f"node config key {key!r}: use letters, digits, '-' and '_'")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    if "'" not in text and not any(ord(c) < 32 or ord(c) == 127 for c in text):
        return f"'{text}'"
    if '"' not in text:
        return json_string(text)
    raise FedpeftError(f"node config {key}={text!r}: a value cannot hold both ' and \" (Flower's --node-config)")


def connection_toml(name: str, address: str, root_certificates: str | None) -> str:
    """The Flower CLI's connection entry ($FLWR_HOME/config.toml) for ``flwr run``."""
    lines = ["[superlink]", f'default = "{name}"', "", f"[superlink.{name}]", f'address = "{address}"']
    if root_certificates is None:
        lines.append("insecure = true")
    else:
        lines.append(f"root-certificates = {json_string(root_certificates)}")
    return "\n".join(lines) + "\n"


def json_string(text: str) -> str:
    """``text`` as a TOML basic string (JSON's escapes are TOML's)."""
    import json

    return json.dumps(text, ensure_ascii=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
