"""Running a Flower deployment's processes: SuperLink and SuperNode command lines, the connection plumbing
(:mod:`~fedpeft.deploy.processes`) and test certificates (:mod:`~fedpeft.deploy.certificates`).

Below the runtime and the CLI, which both use it; it imports neither (nor the experiment), and not Flower.
"""

from fedpeft.deploy.certificates import CA_CERT, SERVER_CERT, SERVER_KEY, make_certificates, make_node_keys
from fedpeft.deploy.processes import (
    PARTITION_KEY,
    FlowerConnectionError,
    check_reachable,
    connection_toml,
    flower_env,
    flower_executable,
    free_port,
    json_string,
    listening,
    split_address,
    superlink_command,
    supernode_command,
)

__all__ = [
    "CA_CERT",
    "PARTITION_KEY",
    "SERVER_CERT",
    "SERVER_KEY",
    "FlowerConnectionError",
    "check_reachable",
    "connection_toml",
    "flower_env",
    "flower_executable",
    "free_port",
    "json_string",
    "listening",
    "make_certificates",
    "make_node_keys",
    "split_address",
    "superlink_command",
    "supernode_command",
]
