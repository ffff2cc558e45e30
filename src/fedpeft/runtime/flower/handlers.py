"""The ClientApp's message handlers, one table: a message type (``train``, ``evaluate``, ``query``; Flower's
``category`` or ``category.action``) names the function that answers it. Every way a message reaches
fedpeft's handlers reads this table: the ClientApp :func:`~fedpeft.runtime.flower.launch.make_client_app`
builds (flower-sim's Ray actors, a plain ``flower-supernode``) and the node worker behind ``fedpeft
supernode`` (:mod:`fedpeft.runtime.flower.worker`). A new message type is one entry here.

A handler is ``handler(message, context, build, fault) -> reply``; ``build`` makes a node's side of a run
and ``fault`` is the fault drill around a client round, both passed in by the entry points
(:class:`ClientHandlers` binds them).
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fedpeft.registry import Registry
from fedpeft.runtime.flower import client
from fedpeft.runtime.flower.client import BuildClientSide, ClientFault, client_evaluate, client_query, client_train
from fedpeft.runtime.flower.records import EVALUATE, QUERY, TRAIN

Handler = Callable[[Any, Any, BuildClientSide, ClientFault | None], Any]
"""``handler(message, context, build, fault)``: the reply Message to ``message``."""

HANDLERS: Registry[Handler] = Registry("client message handler", "message type")
"""Message type -> its handler."""


@HANDLERS.register(TRAIN)
def _train(message: Any, context: Any, build: BuildClientSide, fault: ClientFault | None) -> Any:
    return client_train(message, context, build, fault)


@HANDLERS.register(EVALUATE)
def _evaluate(message: Any, context: Any, build: BuildClientSide, fault: ClientFault | None) -> Any:
    return client_evaluate(message, context, build)


@HANDLERS.register(QUERY)
def _query(message: Any, context: Any, build: BuildClientSide, fault: ClientFault | None) -> Any:
    return client_query(message, context)


def message_type(message: Any) -> str:
    """The table's key for ``message``: its type, without Flower's default action (``train.default`` is
    ``train``)."""
    kind = str(message.metadata.message_type)
    return kind.removesuffix(".default")


@dataclass(frozen=True)
class ClientHandlers:
    """fedpeft's handlers bound to how a node's side of a run is built and to the fault drill: called with
    a message and its context, it answers with the handler its type names."""

    build: BuildClientSide
    fault: ClientFault | None = None

    def __call__(self, message: Any, context: Any) -> Any:
        return HANDLERS.get(message_type(message))(message, context, self.build, self.fault)


def free_client_sides() -> bool:
    """Drop this process's client side (the previous run's model and data) and give its memory back,
    CUDA's cache included; True when there was one."""
    had = client.reset_client_cache()
    gc.collect()
    import torch

    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    return had
