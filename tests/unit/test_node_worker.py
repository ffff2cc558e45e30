"""The node worker's plumbing with no Flower process running: what travels over its socket (records bit for
bit, config values, contexts), the thin ClientApp (imports no torch, forwards to a worker, fails clearly
when the worker is gone, dead or hung), the node config ``fedpeft supernode`` writes, and the handler table."""

from __future__ import annotations

import math
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, Metadata, MetricRecord, RecordDict
from flwr.common.config import parse_config_args
from typer.testing import CliRunner

from fedpeft.cli import app
from fedpeft.deploy import WORKER_KEY, NodeWorkerError, node_config_arg, supernode_command
from fedpeft.deploy.wire import (
    Blobs,
    decode_message,
    decode_records,
    encode_message,
    encode_records,
    recv_frame,
    send_frame,
)
from fedpeft.errors import FedpeftError
from fedpeft.flower_client import forward, handle, message_timeout, remote_exception
from fedpeft.runtime.flower.handlers import HANDLERS, ClientHandlers
from fedpeft.runtime.flower.worker import NodeWorker, listen

CONFIG_VALUES = {
    "int": -(2**62),
    "float": 0.1,
    "negative_zero": -0.0,
    "inf": math.inf,
    "str": "naïve \"quoted\" 'single'\nline",
    "bytes": b"\x00\xff raw",
    "bool": False,
    "ints": [1, 2, 3],
    "floats": [1.5, -2.25],
    "strs": ["a", ""],
    "bytes_list": [b"x", b""],
    "bools": [True, False],
}


def torch_array(t: torch.Tensor) -> Array:
    """An Array holding ``t``'s raw bytes (bfloat16 has no numpy dtype, so it travels as raw bytes)."""
    raw = t.contiguous().view(torch.uint8).numpy().tobytes()
    return Array(str(t.dtype).removeprefix("torch."), tuple(t.shape), "torch.raw", raw)


def records() -> RecordDict:
    gen = torch.Generator().manual_seed(0)
    return RecordDict(
        {
            "arrays": ArrayRecord(
                {
                    "f32": Array(torch.randn(3, 5, generator=gen).numpy()),
                    "i64": Array(np.array([[-(2**60), 7]], dtype=np.int64)),
                    "bf16": torch_array(torch.randn(4, 2, generator=gen).to(torch.bfloat16)),
                    "scalar": Array(np.array(np.float32(3.5))),
                }
            ),
            "empty": ArrayRecord(),
            "config": ConfigRecord(CONFIG_VALUES),
            "metrics": MetricRecord({"loss": 0.25, "n": 12, "curve": [0.5, 0.25]}),
        }
    )


def through_socket(header: dict, blobs: Blobs) -> tuple[dict, list[bytes]]:
    a, b = socket.socketpair()
    with a, b:
        sender = threading.Thread(target=send_frame, args=(a, header, blobs))
        sender.start()
        frame = recv_frame(b)
        sender.join()
    assert frame is not None
    return frame


def assert_same_records(a: RecordDict, b: RecordDict) -> None:
    assert list(a.keys()) == list(b.keys())
    for name in a:
        x, y = a[name], b[name]
        assert type(x) is type(y)
        if isinstance(x, ArrayRecord):
            assert list(x.keys()) == list(y.keys())
            for k in x:
                assert (x[k].dtype, x[k].shape, x[k].stype, x[k].data) == (
                    y[k].dtype,
                    y[k].shape,
                    y[k].stype,
                    y[k].data,
                )
        else:
            assert dict(x) == dict(y)
            for k in x:
                assert type(x[k]) is type(y[k])
                if isinstance(x[k], float):
                    assert math.copysign(1, x[k]) == math.copysign(1, y[k])  # -0.0 stays -0.0


def test_records_travel_bit_for_bit_through_a_socket():
    sent = records()
    blobs = Blobs()
    header, got_blobs = through_socket({"content": encode_records(sent, blobs)}, blobs)
    got = decode_records(header["content"], got_blobs)
    assert_same_records(sent, got)
    bf16 = got["arrays"]["bf16"]
    back = torch.frombuffer(bytearray(bf16.data), dtype=torch.uint8).view(torch.bfloat16).reshape(bf16.shape)
    original = torch.frombuffer(bytearray(sent["arrays"]["bf16"].data), dtype=torch.uint8).view(torch.bfloat16)
    assert torch.equal(back.flatten().view(torch.int16), original.view(torch.int16))
    assert np.array_equal(got["arrays"]["i64"].numpy(), np.array([[-(2**60), 7]], dtype=np.int64))
    assert got["arrays"]["f32"].numpy().tobytes() == sent["arrays"]["f32"].numpy().tobytes()
    assert math.isinf(got["config"]["inf"])


def test_an_empty_record_dict_and_a_nan_metric_travel():
    blobs = Blobs()
    header, got_blobs = through_socket({"content": encode_records(RecordDict(), blobs)}, blobs)
    assert list(decode_records(header["content"], got_blobs).keys()) == []
    blobs = Blobs()
    header, got_blobs = through_socket(
        {"m": encode_records(RecordDict({"m": MetricRecord({"x": math.nan})}), blobs)}, blobs
    )
    assert math.isnan(decode_records(header["m"], got_blobs)["m"]["x"])


def message_and_context(node_config: dict, content: RecordDict | None = None, ttl: float = 3600.0):
    metadata = Metadata(
        run_id=7,
        message_id="m1",
        src_node_id=1,
        dst_node_id=42,
        reply_to_message_id="",
        group_id="3",
        created_at=time.time(),
        ttl=ttl,
        message_type="train",
    )
    message = Message(content if content is not None else records(), metadata=metadata)
    state = RecordDict({"kept": ConfigRecord({"k": b"secret"})})
    context = Context(run_id=7, node_id=42, node_config=node_config, state=state, run_config={"a": 1, "b": "x"})
    return message, context


def test_a_message_and_its_context_are_rebuilt_with_flower_s_api():
    message, context = message_and_context({"partition-id": 1, WORKER_KEY: "/tmp/x y/worker.sock"})
    blobs = Blobs()
    header, got_blobs = through_socket(encode_message(message, context, blobs), blobs)
    got, got_context = decode_message(header, got_blobs)
    for field in ("run_id", "message_id", "src_node_id", "dst_node_id", "group_id", "created_at", "ttl"):
        assert getattr(got.metadata, field) == getattr(message.metadata, field)
    assert got.metadata.message_type == "train"
    assert_same_records(message.content, got.content)
    assert got_context.node_config == context.node_config and got_context.run_config == context.run_config
    assert (got_context.run_id, got_context.node_id) == (7, 42)
    assert_same_records(context.state, got_context.state)
    reply = Message(RecordDict({"m": MetricRecord({"x": 1})}), reply_to=got)  # a handler's reply works
    assert reply.metadata.reply_to_message_id == "m1"


def test_the_thin_client_module_imports_no_torch():
    code = "import sys, fedpeft.flower_client; print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_worker_that_is_not_running_is_an_error_naming_its_socket(tmp_path):
    path = str(tmp_path / "gone.sock")
    message, context = message_and_context({WORKER_KEY: path})
    with pytest.raises(NodeWorkerError, match=f"node worker \\(socket {path}\\) is not running"):
        handle(message, context)


def test_a_worker_that_dies_mid_message_is_an_error_naming_its_socket(tmp_path):
    path = str(tmp_path / "w.sock")
    listener = listen(path)

    def die() -> None:  # reads the request, then goes away without an answer
        conn, _ = listener.accept()
        with conn:
            recv_frame(conn)

    thread = threading.Thread(target=die)
    thread.start()
    message, context = message_and_context({WORKER_KEY: path})
    with pytest.raises(NodeWorkerError, match=f"socket {path}\\) died while handling the message"):
        handle(message, context)
    thread.join()
    listener.close()


def test_a_hung_worker_times_out_with_the_message_s_ttl_and_is_stopped(tmp_path):
    path = str(tmp_path / "hung.sock")
    script = textwrap.dedent(
        f"""
        import socket, time
        from fedpeft.runtime.flower.worker import listen
        listener = listen({path!r})
        conn, _ = listener.accept()
        time.sleep(300)
        """
    )
    hung = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while not Path(path).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        message, context = message_and_context({WORKER_KEY: path}, ttl=2.0)
        with pytest.raises(NodeWorkerError, match="gave no answer within 2 s and was stopped"):
            handle(message, context)
        assert hung.wait(timeout=10) != 0  # killed, not left holding the node's next messages
    finally:
        hung.kill()
        hung.wait()


def test_message_timeout_is_the_ttl_left_or_the_run_s_round_timeout():
    message, _ = message_and_context({}, ttl=100.0)
    assert 98 < message_timeout(message) <= 100
    content = RecordDict({"config": ConfigRecord({"run_config": "flower:\n  round_timeout: 30.0\n"})})
    message, _ = message_and_context({}, content=content, ttl=100.0)
    assert message_timeout(message) == 30.0


class EchoHandlers:
    """A handler standing for fedpeft's: replies with the message's arrays and the node's partition, notes
    the call in the context's state, raises on request."""

    def __call__(self, message, context):
        config = message.content["config"]
        if config.get("raise") == "fedpeft":
            raise FedpeftError("node 1: data-file /x: no such file")
        if config.get("raise") == "key":
            raise KeyError("missing")
        context.state["seen"] = MetricRecord({"round": int(message.metadata.group_id)})
        del context.state["kept"]
        reply = RecordDict(
            {"arrays": message.content["arrays"], "metrics": MetricRecord({"p": context.node_config["p"]})}
        )
        return Message(reply, reply_to=message)


@pytest.fixture
def worker_socket(tmp_path):
    path = str(tmp_path / "worker.sock")
    listener = listen(path)
    worker = NodeWorker(EchoHandlers())
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(None)
                worker.serve_connection(conn)

    thread = threading.Thread(target=serve)
    thread.start()
    yield path
    stop.set()
    thread.join()
    listener.close()


def test_the_thin_app_forwards_to_the_worker_and_gets_its_reply_and_state(worker_socket):
    message, context = message_and_context({WORKER_KEY: worker_socket, "p": 3})
    reply = forward(worker_socket, message, context)
    assert reply.metadata.reply_to_message_id == "m1" and reply.metadata.dst_node_id == 1
    assert_same_records(
        RecordDict({"arrays": message.content["arrays"]}), RecordDict({"arrays": reply.content["arrays"]})
    )
    assert reply.content["metrics"]["p"] == 3
    assert "kept" not in context.state and context.state["seen"]["round"] == 3


def test_the_worker_s_exceptions_are_raised_in_the_thin_app_as_flower_would_report_them(worker_socket):
    for kind, cls_text, text in [
        ("fedpeft", "<class 'fedpeft.errors.FedpeftError'>", "node 1: data-file /x: no such file"),
        ("key", "<class 'KeyError'>", "'missing'"),
    ]:
        content = records()
        content["config"] = ConfigRecord({"raise": kind})
        message, context = message_and_context({WORKER_KEY: worker_socket, "p": 3}, content=content)
        with pytest.raises(Exception) as raised:  # noqa: PT011 (any class: the reason text is what counts)
            handle(message, context)
        assert str(type(raised.value)) == cls_text and str(raised.value) == text
        assert "kept" in context.state  # a failed handler changes nothing


def test_remote_exception_rebuilds_builtins_from_their_args():
    error = remote_exception({"module": "builtins", "qualname": "ValueError", "args": ["bad", 2], "text": "x"})
    assert type(error) is ValueError and error.args == ("bad", 2)


def test_node_config_is_quoted_as_flower_s_parser_reads_it():
    config = {
        "partition-id": 0,
        "data-file": "/data/my files/it's.jsonl",
        "eval-file": '/data/"eval" dir/e.jsonl',
        "schema": "C:\\odd\\path",
        "micro-batch-size": 2,
        "gradient-checkpointing": False,
        WORKER_KEY: "/tmp/fedpeft-node-x/worker.sock",
    }
    assert parse_config_args([node_config_arg(config)]) == config
    cmd = supernode_command("127.0.0.1:8000", 1, 2, node_config={"device": "cuda:1", "data-file": "/a b/c.jsonl"})
    parsed = parse_config_args([cmd[cmd.index("--node-config") + 1]])
    assert parsed == {"partition-id": 1, "num-partitions": 2, "device": "cuda:1", "data-file": "/a b/c.jsonl"}
    with pytest.raises(FedpeftError, match="cannot hold both"):
        node_config_arg({"data-file": "a'b\"c"})


def test_supernode_cli_runs_a_worker_and_puts_the_node_s_options_in_its_node_config(tmp_path):
    data = tmp_path / "my data" / "train.jsonl"
    options = ["supernode", "--partition-id", "1", "--num-partitions", "2", "--data", str(data)]
    options += ["--micro-batch-size", "2", "--no-gradient-checkpointing", "--device", "cpu", "--dry-run"]
    result = CliRunner().invoke(app, options)
    assert result.exit_code == 0, result.output
    worker_line, flower_line = result.output.strip().splitlines()
    assert "-m fedpeft.flower_client worker" in worker_line
    import shlex

    flower = shlex.split(flower_line)
    parsed = parse_config_args([flower[flower.index("--node-config") + 1]])
    assert parsed["data-file"] == str(data) and parsed["micro-batch-size"] == 2 and parsed["device"] == "cpu"
    assert parsed["gradient-checkpointing"] is False and parsed[WORKER_KEY].endswith("worker.sock")
    result = CliRunner().invoke(app, [*options, "--no-worker"])
    assert result.exit_code == 0 and len(result.output.strip().splitlines()) == 1
    assert WORKER_KEY not in parse_config_args(
        [shlex.split(result.output)[shlex.split(result.output).index("--node-config") + 1]]
    )
    result = CliRunner().invoke(app, ["supernode", "--partition-id", "2", "--num-partitions", "2", "--dry-run"])
    assert result.exit_code == 2 and "partition id 2 is not in 0..1" in result.output


def test_every_message_type_of_the_handler_table_reaches_its_handler():
    assert {"train", "evaluate", "query"} <= set(HANDLERS.names())
    message, context = message_and_context({"partition-id": 4})
    message.metadata.message_type = "query"
    reply = ClientHandlers(build=lambda *a: pytest.fail("a query builds nothing"))(message, context)
    assert reply.content["config"]["partition-id"] == 4
    message.metadata.message_type = "train.other"
    with pytest.raises(ValueError, match="unknown message type 'train.other'; valid: "):
        ClientHandlers(build=lambda *a: None)(message, context)


def test_the_worker_builds_once_per_run_and_frees_the_previous_run_first(capsys):
    """Messages of one run reuse the client side (one build); the first message of another run finds the
    previous run's side gone before it builds its own."""
    from fedpeft.runtime.flower import client

    seen = []

    def handle(message, context):
        seen.append(len(client._CLIENT_CACHE))  # sides held when the handler starts
        client.client_side_for(str(message.metadata.run_id), {}, lambda text, node: object())
        return Message(RecordDict(), reply_to=message)

    worker = NodeWorker(handle)
    for run_id in (7, 7, 7, 8):
        message, context = message_and_context({})
        message.metadata.__dict__["_run_id"] = run_id
        blobs = Blobs()
        worker.answer(encode_message(message, context, blobs), [bytes(p) for p in blobs.parts])
    assert seen == [0, 1, 1, 0] and worker.builds == 2
    log = capsys.readouterr().err
    assert log.count("built the client side of run") == 2 and "run 8 starts: freed run 7's client side" in log
    client._CLIENT_CACHE.clear()
