"""Running a Flower deployment's processes: SuperLink and SuperNode command lines, the connection plumbing
(:mod:`~fedpeft.deploy.processes`), a SuperNode with its long-lived node worker (:mod:`~fedpeft.deploy.node`)
and what travels between the node's thin ClientApp and that worker (:mod:`~fedpeft.deploy.wire`), and test
certificates (:mod:`~fedpeft.deploy.certificates`).

Below the runtime and the CLI, which both use it; it imports neither (nor the experiment), nor torch, and
Flower only inside the functions of :mod:`~fedpeft.deploy.wire` that build its objects: the thin ClientApp
imports it.
"""

from fedpeft.deploy.certificates import CA_CERT, SERVER_CERT, SERVER_KEY, make_certificates, make_node_keys
from fedpeft.deploy.node import run_node, worker_command
from fedpeft.deploy.processes import (
    NODE_OPTIONS,
    PARTITION_KEY,
    WORKER_KEY,
    FlowerConnectionError,
    check_reachable,
    connection_toml,
    flower_env,
    flower_executable,
    free_port,
    json_string,
    listening,
    node_config_arg,
    split_address,
    superlink_command,
    supernode_command,
)
from fedpeft.deploy.wire import NodeWorkerError

__all__ = [
    "CA_CERT",
    "NODE_OPTIONS",
    "PARTITION_KEY",
    "SERVER_CERT",
    "SERVER_KEY",
    "WORKER_KEY",
    "FlowerConnectionError",
    "NodeWorkerError",
    "check_reachable",
    "connection_toml",
    "flower_env",
    "flower_executable",
    "free_port",
    "json_string",
    "listening",
    "make_certificates",
    "make_node_keys",
    "node_config_arg",
    "run_node",
    "split_address",
    "superlink_command",
    "supernode_command",
    "worker_command",
]
