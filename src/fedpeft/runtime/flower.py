"""The Flower runtime: the same client round and strategy, with clients behind a Flower Grid.

The server side is unchanged: ``experiment.fit`` drives the rounds and asks its runtime for the sampled
clients' updates. :class:`FlowerRuntime` answers by sending each sampled client's starting state (an
``ArrayRecord``) and its round (a ``ConfigRecord``) to the SuperNode holding that client's partition, and
turning the replies back into :class:`ClientUpdate` objects. On the SuperNode, :func:`client_train` runs
the client round with a :class:`LocalRuntime` built from the same configuration, so a client trains
exactly as it does in the local runtime (same seeds per (run, round, client), same transport rounding,
same LoRA ranks, the strategy's own client hook).

Which node holds which client is asked once (a ``query`` message): a SuperNode answers with its node
config's ``partition-id`` (the Simulation Engine numbers its virtual nodes so; a deployed SuperNode is
started with ``--node-config partition-id=N``).

Nothing here knows how a run is set up: the ClientApp is given a ``build(config_text)`` callable
(``experiment.flower_app`` supplies it), so this layer imports neither ``experiment`` nor ``data``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from fedpeft.errors import FedpeftError
from fedpeft.fl.client_round import ClientHook, ClientUpdate, count_local_steps
from fedpeft.runtime.local import LocalRuntime
from fedpeft.tensors import TensorDict

PARTITION_KEY = "partition-id"
TRAIN, QUERY = "train", "query"


class FlowerRoundError(FedpeftError, RuntimeError):
    pass


def to_record(state: TensorDict):
    from flwr.app import ArrayRecord

    return ArrayRecord({name: t.detach().cpu().contiguous() for name, t in state.items()})


def from_record(record) -> TensorDict:
    return dict(record.to_torch_state_dict())


class FlowerRuntime:
    """A runtime whose clients answer through a Flower ``Grid`` (Simulation Engine or deployment)."""

    def __init__(
        self,
        grid,
        local: LocalRuntime,
        config_text: str,
        timeout: float | None = None,
        secagg: Mapping[str, Any] | None = None,
    ):
        self.grid = grid
        self.local = local
        self.config_text = config_text
        """The run's resolved configuration (YAML), sent with every round: a SuperNode builds its client from it."""
        self.timeout = timeout
        self.secagg = dict(secagg) if secagg is not None else None
        """SecAgg+ settings (``num_shares``, ``reconstruction_threshold``, ``clipping_range``,
        ``quantization_range`` of Flower's SecAggPlusWorkflow); None: clients send their states as they are."""
        self.args, self.ranks, self.transport = local.args, local.ranks, local.transport
        self.nodes: dict[int, int] = {}

    def discover(self, n_clients: int, wait_seconds: float | None = 60.0) -> dict[int, int]:
        """Client id -> node id, from each node's ``partition-id``. Asks every node as it connects and stops
        as soon as each client has a node, so a node that left (and still counts as connected until its
        heartbeats lapse) does not hold the run up; gives up after ``wait_seconds``. ``None`` (a simulation,
        whose nodes exist from the start, one per client): no clock, since a loaded machine can take minutes
        to start them; it stops once every node has answered, with its partition or an error."""
        from flwr.app import ConfigRecord, Message, RecordDict

        deadline = None if wait_seconds is None else time.monotonic() + wait_seconds
        asked: set[int] = set()
        answered: set[int] = set()
        pending: set[str] = set()
        nodes: dict[int, int] = {}
        while True:
            new = [node for node in self.grid.get_node_ids() if node not in asked]
            if new:
                question = RecordDict({"config": ConfigRecord({"ask": PARTITION_KEY})})
                messages = [Message(question, dst_node_id=node, message_type=QUERY) for node in new]
                pending.update(self.grid.push_messages(messages))
                asked.update(new)
            for reply in self.grid.pull_messages(list(pending)):
                pending.discard(reply.metadata.reply_to_message_id)
                answered.add(reply.metadata.src_node_id)
                if not reply.has_error():
                    nodes.setdefault(int(reply.content["config"][PARTITION_KEY]), reply.metadata.src_node_id)
            if all(c in nodes for c in range(n_clients)):
                break
            if deadline is None and len(asked) >= n_clients and answered >= asked:
                break
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(0.3)
        missing = sorted(set(range(n_clients)) - nodes.keys())
        if missing:
            within = "" if wait_seconds is None else f" within flower.connect_timeout={wait_seconds:g} s"
            raise FlowerRoundError(
                f"{len(asked)} SuperNode(s) connected{within}, but none "
                f"holds client(s) {missing[:10]} of fl.clients="
                f"{n_clients}; start one SuperNode per client with --node-config 'partition-id=N num-partitions="
                f"{n_clients}'"
            )
        self.nodes = nodes
        return nodes

    def train_round(
        self,
        server_round: int,
        client_ids: Sequence[int],
        global_state: TensorDict,
        on_client_start: Callable[[int, int], None] | None = None,
        on_step: Callable[[int, int], None] | None = None,
        hook_for: Callable[[int, TensorDict], ClientHook | None] | None = None,
        client_states: Mapping[int, TensorDict] | None = None,
        on_client_failed: Callable[[int, str], None] | None = None,
    ) -> list[ClientUpdate]:
        """The updates of the sampled clients that replied, trained on their SuperNodes (the strategy's hook
        is rebuilt there from the configuration, so ``hook_for`` is not sent). A client whose node reports
        an error, or that does not reply within ``flower.round_timeout``, is reported to
        ``on_client_failed(client, reason)``; without that callback it fails the round."""
        from flwr.app import ConfigRecord, Message, RecordDict

        if not self.nodes:
            raise FlowerRoundError("FlowerRuntime.discover() must run before the first round")

        def failed(cid: int, reason: str) -> None:
            if on_client_failed is None:
                raise FlowerRoundError(f"round {server_round}: client {cid} failed: {reason}")
            on_client_failed(cid, reason)

        if self.secagg is not None:
            return self.secure_round(server_round, client_ids, global_state, failed, on_client_start)
        messages = []
        for cid in client_ids:
            start = (client_states or {}).get(cid, global_state)
            content = RecordDict(
                {
                    "arrays": to_record(start),
                    "config": ConfigRecord({"round": server_round, "client": cid, "run_config": self.config_text}),
                }
            )
            messages.append(
                Message(content, dst_node_id=self.nodes[cid], message_type=TRAIN, group_id=str(server_round))
            )
            if on_client_start is not None:
                on_client_start(cid, count_local_steps(len(self.local.client_examples[cid]), self.args))

        replies = list(self.grid.send_and_receive(messages, timeout=self.timeout))
        # The grid stamps each message with its id as it pushes it; replies (and the SuperLink's own error
        # replies for a node that stopped sending heartbeats) name the message they answer.
        client_of = {m.metadata.message_id: cid for m, cid in zip(messages, client_ids, strict=True)}
        by_client: dict[int, ClientUpdate] = {}
        answered: set[int] = set()
        for reply in replies:
            cid = client_of.get(reply.metadata.reply_to_message_id)
            if cid is None or cid in answered:
                continue
            answered.add(cid)
            if reply.has_error():
                failed(cid, _error_reason(reply.error.reason))
                continue
            try:
                by_client[cid] = update_from_reply(reply.content)
            except (KeyError, TypeError, ValueError) as err:
                failed(cid, f"unreadable reply ({type(err).__name__}: {err})")
        for cid in client_ids:
            if cid not in answered:
                failed(cid, f"no reply within flower.round_timeout={self.timeout} s")
        return [by_client[cid] for cid in client_ids if cid in by_client]

    def secure_round(
        self,
        server_round: int,
        client_ids: Sequence[int],
        global_state: TensorDict,
        failed: Callable[[int, str], None],
        on_client_start: Callable[[int, int], None] | None = None,
    ) -> list[ClientUpdate]:
        """A round under SecAgg+ (Flower's SecAggPlusWorkflow, through its legacy strategy interface): each
        client sends its state masked, and the server learns only the example-weighted mean of the states
        of the clients that completed the protocol. Every returned update carries that mean as its state
        (with the client's own counts and loss), so FedAvg's mean of them is the secure aggregate itself."""
        import flwr.compat.common.recorddict_compat as compat
        from flwr.app import ConfigRecord, Context, RecordDict
        from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
        from flwr.server.compat.legacy_context import LegacyContext
        from flwr.server.workflow import SecAggPlusWorkflow
        from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key

        names = sorted(global_state)
        parameters = ndarrays_to_parameters([global_state[n].detach().cpu().float().numpy() for n in names])
        round_ = _SecureRound()
        for cid in client_ids:
            config = {"round": server_round, "client": cid, "run_config": self.config_text, "names": "\n".join(names)}
            round_.fitins.append((_NodeProxy(self.nodes[cid]), FitIns(parameters, config)))
            if on_client_start is not None:
                on_client_start(cid, count_local_steps(len(self.local.client_examples[cid]), self.args))
        context = LegacyContext(Context(0, 0, {}, RecordDict(), {}), strategy=round_)
        context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: server_round})
        context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(parameters, True)
        heaviest = max(len(self.local.client_examples[cid]) for cid in client_ids)
        SecAggPlusWorkflow(**self.secagg, max_weight=float(heaviest), timeout=self.timeout)(self.grid, context)
        client_of = {node: cid for cid, node in self.nodes.items()}
        if round_.aggregate is None:
            for cid in client_ids:
                failed(cid, "secure aggregation halted: fewer clients than its threshold completed the protocol")
            return []
        arrays = parameters_to_ndarrays(round_.aggregate)
        mean = {n: torch.from_numpy(a.copy()).to(global_state[n].dtype) for n, a in zip(names, arrays, strict=True)}
        updates = {}
        for proxy, fitres in round_.results:
            cid, m = client_of[proxy.node_id], fitres.metrics
            updates[cid] = ClientUpdate(
                client_id=cid,
                state=mean,
                num_examples=int(fitres.num_examples),
                num_steps=int(m["num_steps"]),
                train_loss=float(m["train_loss"]),
                seconds=float(m["seconds"]),
            )
        for cid in client_ids:
            if cid not in updates:
                failed(cid, "dropped out of the secure aggregation round")
        return [updates[cid] for cid in client_ids if cid in updates]

    def train_pooled(self, *args: Any, **kwargs: Any) -> list[ClientUpdate]:
        raise FlowerRoundError("the centralised baseline pools every client's rows in one place: use runtime=local")


@dataclass
class _NodeProxy:
    node_id: int


class _SecureRound:
    """The two legacy Strategy calls SecAggPlusWorkflow makes for one round: which nodes get which FitIns,
    and the (securely aggregated) result."""

    def __init__(self) -> None:
        self.fitins: list[tuple[_NodeProxy, Any]] = []
        self.results: list[tuple[_NodeProxy, Any]] = []
        self.aggregate = None

    def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> list[tuple[_NodeProxy, Any]]:
        return self.fitins

    def aggregate_fit(self, server_round: int, results: list, failures: list) -> tuple[Any, dict]:
        # every result's parameters are already the unmasked weighted mean
        self.results = list(results)
        self.aggregate = results[0][1].parameters if results else None
        return self.aggregate, {}


def _error_reason(reason: str) -> str:
    """The last line of a node's error (a ClientApp's exception arrives with its whole traceback)."""
    lines = [line.strip() for line in str(reason).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "unknown error")[:500]


def update_from_reply(content) -> ClientUpdate:
    m = content["metrics"]
    return ClientUpdate(
        client_id=int(m["client"]),
        state=from_record(content["arrays"]),
        num_examples=int(m["num_examples"]),
        num_steps=int(m["num_steps"]),
        train_loss=float(m["train_loss"]),
        seconds=float(m["seconds"]),
    )


@dataclass
class ClientSide:
    """What a SuperNode needs to train any of the run's clients: the local runtime (model and every
    client's rows, from the same split) and the strategy's client hook."""

    runtime: LocalRuntime
    hook_for: Callable[[int, TensorDict], ClientHook | None] | None


_CLIENT_CACHE: dict[str, ClientSide] = {}

FAULT_ENV = "FEDPEFT_INJECT_FAULT"
"""Fault drills: ``KIND:ROUND:CLIENT[,...]`` (``*`` matches any round or client) makes this process's
ClientApp misbehave in those client rounds, so a deployment's fault handling can be tried before it is
needed. KIND: ``raise`` (the ClientApp raises), ``sleep=S`` (replies S seconds late), ``nan`` (the update
holds NaN), ``shape`` (one tensor of the update loses a row)."""


def injected_fault(server_round: int, client: int) -> str | None:
    """The fault ``FEDPEFT_INJECT_FAULT`` asks of this client round, if any."""
    for item in filter(None, (x.strip() for x in os.environ.get(FAULT_ENV, "").split(","))):
        kind, _, where = item.partition(":")
        rnd, _, cid = where.partition(":")
        if rnd in ("*", str(server_round)) and cid in ("*", str(client)):
            return kind
    return None


def apply_fault(kind: str, state: TensorDict) -> TensorDict:
    """``state`` as the fault drill ``kind`` leaves it (``raise`` and ``sleep`` act before training)."""
    if kind == "raise":
        raise RuntimeError(f"fault drill ({FAULT_ENV}): this client round raises")
    if kind.startswith("sleep="):
        time.sleep(float(kind.removeprefix("sleep=")))
        return state
    name = sorted(state)[0]
    if kind == "nan":
        return state | {name: torch.full_like(state[name], float("nan"))}
    if kind == "shape":
        return state | {name: state[name][1:].clone()}
    raise ValueError(f"{FAULT_ENV}: unknown fault {kind!r}; use raise, sleep=SECONDS, nan or shape")


def client_train(message, build: Callable[[str], ClientSide]):
    """A ClientApp's train handler: one client round from the received state; the reply carries the new
    state and the round's figures. A SecAgg+ round arrives in Flower's legacy FitIns form (see
    :func:`client_train_legacy`)."""
    from flwr.app import Message, MetricRecord, RecordDict

    if LEGACY_FITINS in message.content:
        return client_train_legacy(message, build)
    config = message.content["config"]
    side = _client_side(str(config["run_config"]), build)
    cid, server_round = int(config["client"]), int(config["round"])
    start = from_record(message.content["arrays"])
    fault = injected_fault(server_round, cid)
    corrupts = fault in ("nan", "shape")
    if fault is not None and not corrupts:
        apply_fault(fault, start)
    (update,) = side.runtime.train_round(server_round, [cid], start, hook_for=side.hook_for)
    if corrupts:
        update = replace(update, state=apply_fault(fault, update.state))
    metrics = MetricRecord(
        {
            "client": cid,
            "num_examples": update.num_examples,
            "num_steps": update.num_steps,
            "train_loss": update.train_loss,
            "seconds": update.seconds,
        }
    )
    reply = RecordDict({"arrays": to_record(update.state), "metrics": metrics})
    return Message(reply, reply_to=message)


def _client_side(config_text: str, build: Callable[[str], ClientSide]) -> ClientSide:
    if config_text not in _CLIENT_CACHE:
        _CLIENT_CACHE.clear()  # one run per process at a time: free the previous run's model
        _CLIENT_CACHE[config_text] = build(config_text)
    return _CLIENT_CACHE[config_text]


LEGACY_FITINS = "fitins.parameters"


def client_train_legacy(message, build: Callable[[str], ClientSide]):
    """The train handler for a SecAgg+ round: Flower's legacy FitIns in (the global state as an ordered list
    of arrays, their names in the config), FitRes out; Flower's secaggplus_mod masks the reply's arrays
    before they leave the node."""
    import flwr.compat.common.recorddict_compat as compat
    from flwr.app import Message
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

    fitins = compat.recorddict_to_fitins(message.content, keep_input=True)
    config = fitins.config
    side = _client_side(str(config["run_config"]), build)
    cid, server_round = int(config["client"]), int(config["round"])
    names = str(config["names"]).split("\n")
    arrays = parameters_to_ndarrays(fitins.parameters)
    start = {n: torch.from_numpy(a.copy()) for n, a in zip(names, arrays, strict=True)}
    (update,) = side.runtime.train_round(server_round, [cid], start, hook_for=side.hook_for)
    metrics = {"client": cid, "num_steps": update.num_steps, "train_loss": update.train_loss, "seconds": update.seconds}
    parameters = ndarrays_to_parameters([update.state[n].detach().cpu().float().numpy() for n in names])
    fitres = FitRes(Status(Code.OK, ""), parameters, update.num_examples, metrics)
    return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=message)


def secure_aggregation_mod(message, context, call_next):
    """Flower's SecAgg+ client mod, for the messages of a SecAgg+ round only (the others pass through)."""
    from flwr.client.mod import secaggplus_mod
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    if message.metadata.message_type == TRAIN and RECORD_KEY_CONFIGS in message.content.config_records:
        return secaggplus_mod(message, context, call_next)
    return call_next(message, context)


def client_query(message, context):
    """Answers the server's question of which client this node holds."""
    from flwr.app import ConfigRecord, Message, RecordDict

    partition = context.node_config.get(PARTITION_KEY)
    if partition is None:
        raise ValueError(f"this SuperNode has no {PARTITION_KEY!r} in its node config")
    return Message(RecordDict({"config": ConfigRecord({PARTITION_KEY: int(partition)})}), reply_to=message)


# --- Deployment: the Flower processes and the SuperLink connection -------------------------------------


class FlowerConnectionError(FedpeftError, RuntimeError):
    pass


def flower_executable(name: str) -> str:
    """A Flower command (flwr, flower-superlink, ...) of this Python environment, not another on PATH."""
    import shutil

    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        raise FlowerConnectionError(f"{name} is not installed in this environment; pip install 'flwr>=1.41'")
    return found


def flower_env() -> dict[str, str]:
    """The environment for Flower's processes: this environment's bin first (the SuperLink and SuperNodes
    start flower-superexec, flwr-serverapp and flwr-clientapp by name)."""

    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
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
) -> list[str]:
    """flower-supernode holding client ``partition_id`` of ``num_partitions``; ``port`` is its local
    ClientApp API (one per SuperNode on a machine)."""
    split_address(superlink)
    if not 0 <= partition_id < num_partitions:
        raise FlowerConnectionError(f"partition id {partition_id} is not in 0..{num_partitions - 1}")
    cmd = [flower_executable("flower-supernode"), "--superlink", superlink, "--port", str(port)]
    cmd += ["--node-config", f"{PARTITION_KEY}={partition_id} num-partitions={num_partitions}"]
    cmd += ["--insecure"] if root_certificates is None else ["--root-certificates", root_certificates]
    if auth_private_key is not None:
        cmd += ["--auth-supernode-private-key", auth_private_key]
    if max_wait_time is not None:
        cmd += ["--max-wait-time", str(max_wait_time)]
    return cmd


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


class LoopbackFederation:
    """A SuperLink and SuperNodes on 127.0.0.1 as child processes (for tests, benchmarks and trials), each
    in its own session so that it and what it starts (flower-superexec, the apps) can be stopped together;
    logs and each process's FLWR_HOME under ``workdir``."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.procs: list[subprocess.Popen] = []
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.ports = [self.port]

    def start(self, name: str, *args: str, env: Mapping[str, str] | None = None) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "a")  # noqa: SIM115 (the child holds it)
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedpeft.cli", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**flower_env(), "FLWR_HOME": str(self.workdir / f"flwr-{name}"), **(env or {})},  # apps installed here
            cwd=self.workdir,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def superlink(self, *extra: str) -> None:
        self.start("superlink", "superlink", "--port", str(self.port), *extra)
        deadline = time.monotonic() + 60
        while not listening(self.port):
            if time.monotonic() > deadline or self.procs[-1].poll() is not None:
                raise RuntimeError(f"the SuperLink did not start:\n{self.log('superlink')}")
            time.sleep(0.3)

    def supernode(
        self, partition: int, n: int, *extra: str, name: str | None = None, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen:
        """A SuperNode holding client ``partition`` of ``n``; ``env`` adds to its environment (and its apps')."""
        port = free_port()
        self.ports.append(port)
        return self.start(
            name or f"supernode-{partition}",
            "supernode",
            "--superlink",
            self.address,
            "--partition-id",
            str(partition),
            "--num-partitions",
            str(n),
            "--port",
            str(port),
            *extra,
            env=env,
        )

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text()

    def kill(self, proc: subprocess.Popen) -> None:
        """Stop one process of the federation and what it started (a SuperNode going down)."""
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def survivors(self) -> list[str]:
        """Flower processes of this federation still alive (matched by its ports)."""
        import psutil

        marks = [f":{p}" for p in self.ports]
        found = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            text = " ".join(proc.info["cmdline"] or [])
            if ("flower" in text or "flwr" in text) and any(m in text for m in marks):
                found.append(f"{proc.info['pid']}: {text[:160]}")
        return found

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # flower-superexec starts in a session of its own and exits when its parent does
        while self.survivors() and time.monotonic() < deadline + 10:
            time.sleep(0.5)
        for line in self.survivors():  # last resort, so that nothing outlives the suite
            os.kill(int(line.split(":")[0]), signal.SIGKILL)


CA_CERT, SERVER_CERT, SERVER_KEY = "ca.crt", "server.pem", "server.key"


def make_certificates(directory, hosts: Sequence[str] = ("127.0.0.1", "localhost"), days: int = 365):
    """A self-signed CA and a SuperLink certificate it signs, valid for ``hosts`` (IP addresses or DNS
    names), written as ca.crt, server.pem and server.key. For tests and trials: a real federation's
    certificates come from its own CA. Returns the three paths."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days))

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("fedpeft test CA"))
        .issuer_name(name("fedpeft test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name(hosts[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    paths = (out / CA_CERT, out / SERVER_CERT, out / SERVER_KEY)
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    paths[2].chmod(0o600)
    return paths


def make_node_keys(directory, n: int) -> list[tuple[str, str]]:
    """``n`` SuperNode key pairs for SuperNode authentication (ECDSA P-384, as Flower's docs generate them):
    node-N (private, OpenSSH PEM) and node-N.pub (OpenSSH public key, what the SuperLink is told to accept)."""

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    pairs = []
    for i in range(n):
        key = ec.generate_private_key(ec.SECP384R1())
        private, public = out / f"node-{i}", out / f"node-{i}.pub"
        private.write_bytes(  # OpenSSH format: what flower-supernode reads
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
            )
        )
        private.chmod(0o600)
        public.write_bytes(
            key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        )
        pairs.append((str(private), str(public)))
    return pairs
