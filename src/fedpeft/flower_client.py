"""fedpeft's ClientApp as a deployment names it (``fedpeft.flower_client:client_app``): a thin app that
imports no torch, since Flower starts a fresh ClientApp process for every message.

On a SuperNode started by ``fedpeft supernode`` (node config ``worker``: the socket of the node's
long-lived worker, :mod:`fedpeft.deploy.node`) it forwards each message (its records and the node's
context) to the worker, which holds the run's model between messages, and turns the worker's answer into
the reply; a worker that is gone, dies or hangs is this client's failure. Without ``worker`` (a plain
``flower-supernode``) it runs fedpeft's handlers in its own process, as :mod:`fedpeft.flower_apps` binds
them. SecAgg+'s client mod stays here, where Flower keeps its state (the context); only the call inside it
is forwarded.

``python -m fedpeft.flower_client worker SOCKET`` is the node worker itself (``fedpeft supernode`` starts it).
"""

from __future__ import annotations

import builtins
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from flwr.clientapp import ClientApp

from fedpeft.deploy import WORKER_KEY
from fedpeft.deploy.wire import Blobs, ask_worker, decode_records, encode_message

DEFAULT_TIMEOUT = 12 * 3600.0
"""Seconds the thin app waits for the worker when neither the message's TTL nor ``flower.round_timeout``
says less (Flower's own default TTL)."""


def _secure_aggregation_mod(message: Any, context: Any, call_next: Callable[[Any, Any], Any]) -> Any:
    """Flower's SecAgg+ client mod, for the train messages of a SecAgg+ round only (as
    :func:`fedpeft.runtime.flower.secagg.secure_aggregation_mod`, which this module cannot import: torch)."""
    from flwr.client.mod import secaggplus_mod
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    if message.metadata.message_type == "train" and RECORD_KEY_CONFIGS in message.content.config_records:
        return secaggplus_mod(message, context, call_next)
    return call_next(message, context)


client_app = ClientApp(mods=[_secure_aggregation_mod])


@client_app.train()
def _train(message: Any, context: Any) -> Any:
    return handle(message, context)


@client_app.evaluate()
def _evaluate(message: Any, context: Any) -> Any:
    return handle(message, context)


@client_app.query()
def _query(message: Any, context: Any) -> Any:
    return handle(message, context)


def handle(message: Any, context: Any) -> Any:
    """The reply to ``message``: from the node's worker when the node config names one, else from the
    handlers run here."""
    path = context.node_config.get(WORKER_KEY)
    if path:
        return forward(str(path), message, context)
    return client_handlers()(message, context)


def client_handlers() -> Callable[[Any, Any], Any]:
    """fedpeft's handlers as the entry points bind them (imports torch, transformers, the experiment)."""
    from fedpeft import flower_apps

    return flower_apps.client_handlers


def forward(path: str, message: Any, context: Any) -> Any:
    """``message`` handled by the worker at ``path``: its reply, the context's state updated as the handler
    left it; the handler's exception is raised here (Flower replies with it)."""
    from flwr.app import Error, Message

    blobs = Blobs()
    request = encode_message(message, context, blobs)
    reply, reply_blobs = ask_worker(path, request, blobs, message_timeout(message))
    if "error" in reply:
        raise remote_exception(reply["error"])
    if "flower_error" in reply:
        error = reply["flower_error"]
        return Message(Error(code=int(error["code"]), reason=str(error["reason"])), reply_to=message)
    for name in reply.get("state_removed", []):
        del context.state[name]
    for name, record in decode_records(reply.get("state", []), reply_blobs).items():
        context.state[name] = record
    return Message(decode_records(reply["content"], reply_blobs), reply_to=message)


def message_timeout(message: Any) -> float:
    """How long the worker may take: what is left of the message's TTL, or ``flower.round_timeout`` of the
    run's config when that is shorter, else :data:`DEFAULT_TIMEOUT`."""
    limits = []
    ttl = float(message.metadata.ttl or 0)
    if ttl > 0:
        limits.append(float(message.metadata.created_at) + ttl - time.time())
    round_timeout = _round_timeout(message)
    if round_timeout is not None:
        limits.append(round_timeout)
    return max(1.0, min(limits)) if limits else DEFAULT_TIMEOUT


def _round_timeout(message: Any) -> float | None:
    """``flower.round_timeout`` of the run's config the message carries (``run_config``), if any."""
    import yaml

    for record in message.content.config_records.values():
        text = record.get("run_config")
        if isinstance(text, str):
            try:
                value = (yaml.safe_load(text) or {}).get("flower", {}).get("round_timeout")
                return float(value) if value is not None else None
            except (yaml.YAMLError, AttributeError, TypeError, ValueError):
                return None
    return None


def remote_exception(info: dict[str, Any]) -> Exception:
    """The worker's exception, to raise here: a builtin one rebuilt from its args, any other as a
    RuntimeError of a class with the same module and name (Flower's error reply names the class: the
    reason reads as it would had the handler run here)."""
    module, qualname, args, text = info["module"], info["qualname"], info.get("args"), info["text"]
    if module == "builtins" and args is not None:
        cls = getattr(builtins, qualname, None)
        if isinstance(cls, type) and issubclass(cls, Exception):
            try:
                return cls(*args)
            except Exception:  # noqa: BLE001 (an exception class with another signature: fall through)
                pass
    remote = type(qualname.rpartition(".")[2], (RuntimeError,), {"__module__": module, "__qualname__": qualname})
    return remote(text)


def worker_main(argv: list[str]) -> None:
    """``python -m fedpeft.flower_client worker SOCKET``: the node worker (import everything once, then
    answer the node's messages at SOCKET). Ctrl-C in the node's terminal reaches ``fedpeft supernode``,
    which stops the worker; the worker itself ignores it."""
    if len(argv) != 2 or argv[0] != "worker":
        sys.exit("usage: python -m fedpeft.flower_client worker SOCKET")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    handlers = client_handlers()
    from fedpeft.runtime.flower.worker import serve

    serve(argv[1], handlers)


if __name__ == "__main__":
    worker_main(sys.argv[1:])
