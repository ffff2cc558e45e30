"""The deployment plumbing that needs no running Flower process: the run a deployed ServerApp is asked
for, the Flower command lines and CLI connection entry fedpeft writes, and the test certificates."""

from __future__ import annotations

import ipaddress
import shlex

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
from typer.testing import CliRunner

from fedpeft.cli import app
from fedpeft.config import load_config
from fedpeft.config.recipes import dump_config
from fedpeft.flower_apps import config_from_run_config
from fedpeft.runtime.flower.launch import APP_PYPROJECT

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: flwr depends on tomli
    import tomli as tomllib

from fedpeft.deploy import (
    check_reachable,
    connection_toml,
    free_port,
    json_string,
    make_certificates,
    make_node_keys,
    supernode_command,
)
from fedpeft.runtime.flower import FlowerConnectionError, FlowerRoundError


def test_run_config_with_recipe_and_overrides_gives_that_recipe_on_the_deployment_runtime():
    config, resume = config_from_run_config({"recipe": "default", "overrides": "fl.rounds=3 fl.clients=2"})
    expected = load_config("default", ["fl.rounds=3", "fl.clients=2"])
    assert resume is None
    assert config.runtime == "flower-deployment"
    assert config.model_dump() == expected.model_copy(update={"runtime": "flower-deployment"}).model_dump()


def test_run_config_with_a_whole_config_wins_over_recipe_and_survives_the_toml_round_trip():
    sent = load_config("default", ["fl.rounds=4", "data.max_rows=77", "runtime=flower-deployment"])
    text = APP_PYPROJECT.format(config=json_string(dump_config(sent)), resume=json_string(""))
    run_config = tomllib.loads(text)["tool"]["flwr"]["app"]["config"]
    config, resume = config_from_run_config({**run_config, "recipe": "no-such-recipe"})
    assert resume is None and config.model_dump() == sent.model_dump()
    assert yaml.safe_load(run_config["config"])["fl"]["rounds"] == 4


def test_supernode_command_carries_the_partition_and_refuses_one_outside_the_federation():
    cmd = supernode_command("127.0.0.1:8000", 1, 3, port=9099, root_certificates="ca.crt", auth_private_key="k")
    line = shlex.join(cmd)
    assert "--node-config 'partition-id=1 num-partitions=3'" in line
    assert "--root-certificates ca.crt" in line and "--auth-supernode-private-key k" in line
    assert "--insecure" not in cmd
    with pytest.raises(FlowerConnectionError, match="partition id 3 is not in 0..2"):
        supernode_command("127.0.0.1:8000", 3, 3)
    with pytest.raises(FlowerConnectionError, match="not host:port"):
        supernode_command("127.0.0.1", 0, 3)


def test_superlink_cli_runs_apps_in_this_environment_and_is_insecure_only_without_certificates(tmp_path):
    result = CliRunner().invoke(app, ["superlink", "--port", "8123", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "--disable-runtime-dependency-installation" in result.output and "--insecure" in result.output
    result = CliRunner().invoke(app, ["superlink", "--certificates", str(tmp_path), "--dry-run"])
    assert result.exit_code == 2 and "ca.crt" in result.output and "fedpeft certs" in result.output
    make_certificates(tmp_path)
    result = CliRunner().invoke(app, ["superlink", "--certificates", str(tmp_path), "--dry-run"])
    assert result.exit_code == 0 and "--ssl-certfile" in result.output and "--insecure" not in result.output


def test_connection_entry_is_valid_toml_for_flwr():
    entry = tomllib.loads(connection_toml("c", "10.0.0.5:8000", '/certs/"odd"/ca.crt'))
    assert entry["superlink"]["default"] == "c"
    assert entry["superlink"]["c"] == {"address": "10.0.0.5:8000", "root-certificates": '/certs/"odd"/ca.crt'}
    assert tomllib.loads(connection_toml("c", "127.0.0.1:8000", None))["superlink"]["c"]["insecure"] is True


def test_unreachable_address_error_names_it():
    port = free_port()
    with pytest.raises(FlowerConnectionError, match=f"SuperLink unreachable at 127.0.0.1:{port}"):
        check_reachable(f"127.0.0.1:{port}", timeout=1)


def test_certificates_chain_to_the_ca_and_name_the_hosts(tmp_path):
    ca_path, cert_path, key_path = make_certificates(tmp_path, ("127.0.0.1", "superlink.example"))
    ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    cert.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)
    assert "superlink.example" in sans.get_values_for_type(x509.DNSName)
    assert oct(key_path.stat().st_mode & 0o777) == "0o600"
    (private, public), _ = make_node_keys(tmp_path, 2)
    key = load_ssh_private_key(open(private, "rb").read(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert load_ssh_public_key(open(public, "rb").read()).public_numbers() == key.public_key().public_numbers()


class SlowGrid:
    """A Flower Grid whose nodes answer the partition question only after ``polls`` pulls (nodes starting on a
    loaded machine); ``broken`` nodes answer with an error."""

    def __init__(self, n: int, polls: int, broken: frozenset[int] = frozenset()):
        self.n, self.polls, self.broken, self.pulls, self.sent = n, polls, broken, 0, {}

    def get_node_ids(self):
        return list(range(100, 100 + self.n))

    def push_messages(self, messages):
        ids = []
        for message in messages:
            ids.append(f"m{len(self.sent)}")
            self.sent[ids[-1]] = message.dst_node_id
        return ids

    def pull_messages(self, ids):
        from types import SimpleNamespace

        self.pulls += 1
        if self.pulls < self.polls:
            return []
        replies = []
        for mid in ids:
            node = self.sent[mid]
            broken = node in self.broken
            replies.append(
                SimpleNamespace(
                    metadata=SimpleNamespace(reply_to_message_id=mid, src_node_id=node),
                    has_error=lambda broken=broken: broken,
                    content={"config": {"partition-id": node - 100}},
                )
            )
        return replies


def slow_runtime(grid, monkeypatch):
    """A FlowerRuntime on ``grid`` whose clock jumps an hour per poll, and that never really sleeps (its
    questions are plain records: a real Flower Message needs a running Flower run)."""
    from types import SimpleNamespace

    import flwr.app

    import fedpeft.runtime.flower.server as flower

    monkeypatch.setattr(
        flwr.app, "Message", lambda content, dst_node_id, message_type: SimpleNamespace(dst_node_id=dst_node_id)
    )

    clock = iter(range(0, 10**7, 3600))
    monkeypatch.setattr(flower.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(flower.time, "sleep", lambda seconds: None)
    return flower.FlowerRuntime(grid, SimpleNamespace(args=None, ranks=None, transport=None), "")


def test_a_simulation_waits_for_slow_nodes_without_a_clock(monkeypatch):
    """Regression: under load the simulated nodes took over flower.connect_timeout to start and a simulated
    run failed with 'none holds client(s) [0, 1]'. A simulation's nodes exist from the start: no clock."""
    runtime = slow_runtime(SlowGrid(2, polls=50), monkeypatch)
    assert runtime.discover(2, wait_seconds=None) == {0: 100, 1: 101}


def test_a_deployment_still_gives_up_after_connect_timeout(monkeypatch):
    runtime = slow_runtime(SlowGrid(2, polls=50), monkeypatch)
    with pytest.raises(
        FlowerRoundError, match=r"within flower.connect_timeout=120 s, but none holds client\(s\) \[0, 1\]"
    ):
        runtime.discover(2, wait_seconds=120)


def test_a_simulated_node_that_answers_with_an_error_ends_discovery(monkeypatch):
    runtime = slow_runtime(SlowGrid(2, polls=3, broken=frozenset({101})), monkeypatch)
    with pytest.raises(FlowerRoundError, match=r"none holds client\(s\) \[1\]"):
        runtime.discover(2, wait_seconds=None)


class TwinGrid(SlowGrid):
    """Two nodes started with the same partition id."""

    def pull_messages(self, ids):
        replies = super().pull_messages(ids)
        for reply in replies:
            reply.content = {"config": {"partition-id": 0}}
        return replies


def test_two_nodes_claiming_the_same_client_are_refused_by_name(monkeypatch):
    runtime = slow_runtime(TwinGrid(2, polls=1), monkeypatch)
    with pytest.raises(FlowerRoundError, match=r"SuperNodes 100 and 101 both hold client 0 .*own --partition-id"):
        runtime.discover(2, wait_seconds=60)
