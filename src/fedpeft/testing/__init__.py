"""Helpers for tests, benchmarks and trials of fedpeft itself: a loopback Flower deployment
(:class:`LoopbackFederation`) and the ClientApp fault drills (``FEDPEFT_INJECT_FAULT``).

Importable by tests, benchmarks and the entry points (``cli``, ``flower_apps``); nothing below the entry
points imports it: the runtime takes the drill as a hook.
"""

from fedpeft.testing.faults import FAULT_ENV, apply_fault, fault_drill, injected_fault
from fedpeft.testing.loopback import LoopbackFederation

__all__ = ["FAULT_ENV", "LoopbackFederation", "apply_fault", "fault_drill", "injected_fault"]
