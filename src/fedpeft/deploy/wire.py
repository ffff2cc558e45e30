"""What travels between a SuperNode's thin ClientApp (:mod:`fedpeft.flower_client`) and its node worker
(:mod:`fedpeft.runtime.flower.worker`) over the node's private Unix socket: one request (a Flower message
and its context), one reply (the reply's records, or the handler's error).

A frame is ``MAGIC``, the byte lengths of a JSON header and of the binary part, the header, then the binary
part: every array's raw bytes (and every ``bytes`` config value) one after the other, named in the header by
index. Records travel as plain values (config and metric values as JSON, which gives back the same ints,
floats, strings and bools), arrays as their raw bytes with dtype, shape and serialisation type, so both ends
rebuild them bit for bit and neither needs torch. Flower is imported only inside the functions that build
its objects.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import time
from collections.abc import Iterable, Mapping
from typing import Any

from fedpeft.errors import FedpeftError

MAGIC = b"FPNW1"
_LENGTHS = struct.Struct(">QQ")
_RECORD_KINDS = ("arrays", "config", "metrics")


class NodeWorkerError(FedpeftError, RuntimeError):
    """A SuperNode's node worker cannot be reached, died, hung, or sent something unreadable."""


class Blobs:
    """The binary part of a frame being written: each added buffer gets the next index."""

    def __init__(self) -> None:
        self.parts: list[bytes | memoryview] = []

    def add(self, data: bytes | memoryview) -> int:
        self.parts.append(data)
        return len(self.parts) - 1


# --- plain values ---------------------------------------------------------------------------------------


def encode_value(value: Any, blobs: Blobs) -> Any:
    """A config, metric or user-config value as JSON: scalars as themselves, ``bytes`` as ``{"b": index}``
    into the binary part, lists as ``{"l": [...]}``."""
    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes | bytearray):
        return {"b": blobs.add(bytes(value))}
    if isinstance(value, list | tuple):
        return {"l": [encode_value(v, blobs) for v in value]}
    raise TypeError(f"a record value of type {type(value).__name__} cannot travel to the node worker")


def decode_value(value: Any, blobs: list[bytes]) -> Any:
    if isinstance(value, dict):
        if "b" in value:
            return blobs[value["b"]]
        return [decode_value(v, blobs) for v in value["l"]]
    return value


def encode_mapping(values: Mapping[str, Any], blobs: Blobs) -> list[list[Any]]:
    """``values`` as ``[[key, value], ...]`` (JSON keeps the order of a list)."""
    return [[str(k), encode_value(v, blobs)] for k, v in values.items()]


def decode_mapping(items: Iterable[list[Any]], blobs: list[bytes]) -> dict[str, Any]:
    return {k: decode_value(v, blobs) for k, v in items}


# --- records --------------------------------------------------------------------------------------------


def encode_records(records: Any, blobs: Blobs) -> list[list[Any]]:
    """A Flower ``RecordDict`` as ``[[name, kind, body], ...]`` in its order; an array record's body is
    ``[[key, dtype, shape, stype, blob], ...]`` with the array's bytes in the binary part, as they are."""
    from flwr.app import ArrayRecord, ConfigRecord

    out: list[list[Any]] = []
    for name, record in records.items():
        if isinstance(record, ArrayRecord):
            body = [[k, a.dtype, list(a.shape), a.stype, blobs.add(a.data)] for k, a in record.items()]
            out.append([name, "arrays", body])
        else:
            kind = "config" if isinstance(record, ConfigRecord) else "metrics"
            out.append([name, kind, encode_mapping(record, blobs)])
    return out


def decode_records(items: Iterable[list[Any]], blobs: list[bytes]) -> Any:
    """The Flower ``RecordDict`` :func:`encode_records` describes."""
    from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

    records = RecordDict()
    for name, kind, body in items:
        if kind == "arrays":
            arrays = {
                k: Array(dtype, tuple(int(n) for n in shape), stype, blobs[i]) for k, dtype, shape, stype, i in body
            }
            records[name] = ArrayRecord(arrays)
        elif kind == "config":
            records[name] = ConfigRecord(decode_mapping(body, blobs))
        elif kind == "metrics":
            records[name] = MetricRecord(decode_mapping(body, blobs))
        else:
            raise NodeWorkerError(f"unknown record kind {kind!r} (one of {', '.join(_RECORD_KINDS)})")
    return records


# --- messages and contexts ------------------------------------------------------------------------------

METADATA_FIELDS = (
    "run_id",
    "message_id",
    "src_node_id",
    "dst_node_id",
    "reply_to_message_id",
    "group_id",
    "created_at",
    "ttl",
    "message_type",
    "src_task_id",
    "dst_task_id",
)


def encode_message(message: Any, context: Any, blobs: Blobs) -> dict[str, Any]:
    """A request: the message's metadata and records, and its context (node and run config, state)."""
    return {
        "metadata": {f: getattr(message.metadata, f) for f in METADATA_FIELDS},
        "content": encode_records(message.content, blobs),
        "context": {
            "run_id": context.run_id,
            "node_id": context.node_id,
            "node_config": encode_mapping(context.node_config, blobs),
            "run_config": encode_mapping(context.run_config, blobs),
            "state": encode_records(context.state, blobs),
        },
    }


def decode_message(request: Mapping[str, Any], blobs: list[bytes]) -> tuple[Any, Any]:
    """(Message, Context) rebuilt with Flower's API from a request."""
    from flwr.app import Context, Message, Metadata

    c = request["context"]
    context = Context(
        run_id=int(c["run_id"]),
        node_id=int(c["node_id"]),
        node_config=decode_mapping(c["node_config"], blobs),
        state=decode_records(c["state"], blobs),
        run_config=decode_mapping(c["run_config"], blobs),
    )
    message = Message(decode_records(request["content"], blobs), metadata=Metadata(**request["metadata"]))
    return message, context


# --- frames ---------------------------------------------------------------------------------------------


def send_frame(sock: socket.socket, header: Mapping[str, Any], blobs: Blobs) -> None:
    """One frame: magic, lengths, JSON header (with the blobs' sizes), the blobs."""
    sizes = [memoryview(p).nbytes for p in blobs.parts]
    head = json.dumps({**header, "blob_sizes": sizes}, separators=(",", ":")).encode()
    sock.sendall(MAGIC + _LENGTHS.pack(len(head), sum(sizes)) + head)
    for part in blobs.parts:
        sock.sendall(part)


def recv_frame(sock: socket.socket) -> tuple[dict[str, Any], list[bytes]] | None:
    """The next frame as (header, blobs); None when the peer closed before sending anything."""
    first = _recv_exactly(sock, len(MAGIC) + _LENGTHS.size, allow_eof=True)
    if first is None:
        return None
    if first[: len(MAGIC)] != MAGIC:
        raise NodeWorkerError("not a fedpeft node-worker frame (wrong magic)")
    head_len, body_len = _LENGTHS.unpack(first[len(MAGIC) :])
    header = json.loads(_recv_exactly(sock, head_len))
    body = _recv_exactly(sock, body_len)
    blobs, offset = [], 0
    for size in header.pop("blob_sizes"):
        blobs.append(bytes(body[offset : offset + size]))
        offset += size
    return header, blobs


def _recv_exactly(sock: socket.socket, n: int, allow_eof: bool = False) -> Any:
    buffer = bytearray(n)
    view, got = memoryview(buffer), 0
    while got < n:
        read = sock.recv_into(view[got:], min(n - got, 1 << 24))
        if read == 0:
            if allow_eof and got == 0:
                return None
            raise ConnectionResetError(f"the peer closed the connection after {got} of {n} bytes")
        got += read
    return buffer


# --- the thin app's side of a call ----------------------------------------------------------------------


def ask_worker(
    path: str, request: Mapping[str, Any], blobs: Blobs, timeout: float
) -> tuple[dict[str, Any], list[bytes]]:
    """Send one request to the node worker listening at ``path`` and wait up to ``timeout`` seconds for its
    reply. A worker that cannot be reached, closes the connection or does not answer in time is a
    :class:`NodeWorkerError` naming its socket; one that does not answer in time is killed (``fedpeft
    supernode`` starts a fresh one), so that a hung worker does not hold the node's next messages."""
    what = f"this SuperNode's node worker (socket {path})"
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(min(timeout, 60.0))
        try:
            sock.connect(path)
        except OSError as err:
            raise NodeWorkerError(
                f"{what} is not running ({err.strerror or err}); restart the node with fedpeft supernode"
            ) from None
        try:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            send_frame(sock, request, blobs)
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            reply = recv_frame(sock)
        except TimeoutError:
            _kill_peer(sock)
            raise NodeWorkerError(
                f"{what} gave no answer within {timeout:.0f} s and was stopped (fedpeft supernode starts a fresh one)"
            ) from None
        except OSError as err:
            reply, detail = None, f" ({err})"
        else:
            detail = ""
    if reply is None:
        raise NodeWorkerError(
            f"{what} died while handling the message{detail}; fedpeft supernode starts a fresh one (see the node's log)"
        )
    return reply


def _kill_peer(sock: socket.socket) -> None:
    """Kill the process at the other end of a Unix socket, when it is this user's (Linux: SO_PEERCRED)."""
    peercred = getattr(socket, "SO_PEERCRED", None)
    if peercred is None:
        return
    try:
        pid, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, peercred, struct.calcsize("3i")))
        if pid > 0 and pid != os.getpid() and uid == os.getuid():
            os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
