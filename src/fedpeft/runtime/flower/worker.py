"""The node worker: the long-lived process behind a ``fedpeft supernode`` that answers the node's ClientApp
messages, so that torch and the rest are imported once and a run's model is loaded once per node, not
once per message (Flower starts a fresh ClientApp process for each).

It listens on a Unix socket (:mod:`fedpeft.deploy.wire` is the format) and answers one request at a time:
it rebuilds the Flower Message and Context with Flower's API, calls the handler the message type names
(:class:`~fedpeft.runtime.flower.handlers.ClientHandlers`, as the in-process ClientApp does), and sends back
the reply's records and the context's state records the handler changed, or the handler's error. The
first message of a new run frees the previous run's side (model, data, CUDA cache) before anything is
built. Every build is logged (``built the client side``), so a node's log shows the model loaded once.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from fedpeft.deploy.wire import Blobs, decode_message, encode_records, recv_frame, send_frame
from fedpeft.runtime.flower.client import cached_sides
from fedpeft.runtime.flower.handlers import free_client_sides


def _say(text: str) -> None:
    print(f"fedpeft node worker {os.getpid()}: {text}", file=sys.stderr, flush=True)


class NodeWorker:
    """Answers requests with ``handle(message, context) -> reply`` (a bound
    :class:`~fedpeft.runtime.flower.handlers.ClientHandlers`); counts the client sides it builds."""

    def __init__(self, handle: Callable[[Any, Any], Any]):
        self.handle = handle
        self.run_id: int | None = None
        self.builds = 0

    def answer(self, request: dict[str, Any], blobs: list[bytes]) -> tuple[dict[str, Any], Blobs]:
        """The reply frame (header and blobs) to one request."""
        message, context = decode_message(request, blobs)
        run_id = int(message.metadata.run_id)
        if self.run_id is not None and run_id != self.run_id and free_client_sides():
            _say(f"run {run_id} starts: freed run {self.run_id}'s client side")
        self.run_id = run_id
        state_before = _snapshot(context.state)
        before, started = cached_sides(), time.perf_counter()
        out = Blobs()
        try:
            reply = self.handle(message, context)
        except Exception as err:  # the client's failure: the thin app raises it, Flower replies with it
            traceback.print_exc(file=sys.stderr)
            return {"error": _describe(err)}, out
        finally:
            after = cached_sides()
            if after and after != before:
                self.builds += 1
                seconds = time.perf_counter() - started
                _say(f"built the client side of run {run_id} (build {self.builds} of this worker, {seconds:.1f} s)")
        if reply.has_error():
            return {"flower_error": {"code": int(reply.error.code), "reason": str(reply.error.reason)}}, out
        header = {"content": encode_records(reply.content, out)}
        state_after = _snapshot(context.state)
        changed = [name for name in state_after if state_before.get(name) != state_after[name]]
        header["state"] = encode_records(_subset(context.state, changed), out)
        header["state_removed"] = [name for name in state_before if name not in state_after]
        return header, out

    def serve_connection(self, conn: socket.socket) -> None:
        """One request on ``conn``: read it, answer it, send the answer. A peer that went away (the thin app
        timed out, or was stopped) costs only its own answer."""
        try:
            frame = recv_frame(conn)
            if frame is None:
                return
            header, blobs = self.answer(*frame)
            send_frame(conn, header, blobs)
        except OSError as err:
            _say(f"a ClientApp went away before its answer ({err})")


def _describe(err: BaseException) -> dict[str, Any]:
    """An exception as the thin app re-raises it: its class's module and qualified name, its args when
    they are plain values (a builtin exception is rebuilt from them), and its text."""
    cls = type(err)
    args = list(err.args) if all(isinstance(a, str | int | float | bool) for a in err.args) else None
    return {"module": cls.__module__, "qualname": cls.__qualname__, "args": args, "text": str(err)}


def _snapshot(records: Any) -> dict[str, tuple[str, tuple[bytes, ...]]]:
    """Each record of a RecordDict in a comparable form (its encoding, its bytes)."""
    import json

    snapshot = {}
    for name in list(records.keys()):
        blobs = Blobs()
        (encoded,) = encode_records(_subset(records, [name]), blobs)
        snapshot[name] = (json.dumps(encoded), tuple(bytes(p) for p in blobs.parts))
    return snapshot


def _subset(records: Any, names: list[str]) -> Any:
    from flwr.app import RecordDict

    return RecordDict({name: records[name] for name in names})


def listen(path: str) -> socket.socket:
    """A Unix socket listening at ``path`` (mode 0600). It is bound under a temporary name and renamed, so
    that ``path`` exists only once connections are accepted (the supervisor waits for it)."""
    staging = f"{path}.{os.getpid()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(staging)
    os.chmod(staging, 0o600)
    listener.listen(16)
    os.replace(staging, path)
    return listener


def serve(path: str, handle: Callable[[Any, Any], Any]) -> None:
    """Answer requests at ``path`` one at a time, until the process is stopped."""
    worker = NodeWorker(handle)
    listener = listen(path)
    _say(f"listening at {path}")
    while True:
        conn, _ = listener.accept()
        with conn:
            worker.serve_connection(conn)
