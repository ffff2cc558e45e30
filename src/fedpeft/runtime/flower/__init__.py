"""The Flower runtimes (``flower-sim``, ``flower-deployment``): the same client round and strategy, with the
clients behind a Flower Grid.

- :mod:`.server`: :class:`~.server.FlowerRuntime`, the runtime the experiment's round loop talks to;
- :mod:`.client`: the ClientApp's handlers on a SuperNode (:class:`~.client.ClientSide`, its cache);
- :mod:`.secagg`: rounds under SecAgg+ (server side, client handler, client mod);
- :mod:`.records`: what travels (message types, states as ArrayRecords);
- :mod:`.launch`: the two launchers, the ClientApp, and submitting a run with ``flwr run``.

Importing this package imports no Flower (each module imports it inside the functions that use it); only
the error classes and :class:`~.client.ClientSide` (what the experiment builds a client's side as) are
re-exported here.
"""

from fedpeft.runtime.flower.client import ClientSide
from fedpeft.runtime.flower.errors import FlowerConnectionError, FlowerRoundError

__all__ = ["ClientSide", "FlowerConnectionError", "FlowerRoundError"]
