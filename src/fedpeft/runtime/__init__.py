"""Runtimes: what moves states between the server and the clients, each registered by its ``runtime:``
name in :data:`fedpeft.runtime.base.RUNTIMES` when its module is imported (here, so that the registry is
complete whoever imports it first). Flower itself is imported only when a Flower runtime runs."""

from fedpeft.runtime import local  # noqa: F401
from fedpeft.runtime.flower import launch  # noqa: F401
