"""fedpeft supernode runs Flower's flower-supernode with its idle waits capped: only the SuperNode loop's
sleeps change, only on the Flower versions that were checked, and a bad setting is refused by name."""

import time

import flwr.supernode.start_client_internal as loop
import pytest

from fedpeft.deploy import supernode_command
from fedpeft.deploy.node_loop import CappedSleep, poll_seconds, shorten_idle_waits


def test_the_cap_shortens_long_sleeps_only_and_keeps_the_rest_of_time():
    capped = CappedSleep(0.01)
    started = time.perf_counter()
    capped.sleep(3)
    assert time.perf_counter() - started < 1.0
    assert capped.monotonic is time.monotonic and capped.time is time.time


def test_only_flower_s_supernode_loop_is_patched_and_only_on_checked_versions(monkeypatch):
    import flwr

    monkeypatch.setattr(loop, "time", time)
    assert shorten_idle_waits(0.2) is True
    assert isinstance(loop.time, CappedSleep) and loop.time.cap == 0.2
    assert time.sleep is not loop.time.sleep  # the time module itself is untouched
    monkeypatch.setattr(loop, "time", time)
    monkeypatch.setattr(flwr, "__version__", "9.0.0")
    assert shorten_idle_waits(0.2) is False and loop.time is time


def test_the_poll_comes_from_the_environment_and_a_bad_value_is_refused(monkeypatch):
    monkeypatch.delenv("FEDPEFT_NODE_POLL_SECONDS", raising=False)
    assert poll_seconds() == 0.2
    monkeypatch.setenv("FEDPEFT_NODE_POLL_SECONDS", "0.5")
    assert poll_seconds() == 0.5
    for bad in ("0", "-1", "soon"):
        monkeypatch.setenv("FEDPEFT_NODE_POLL_SECONDS", bad)
        with pytest.raises(SystemExit, match="FEDPEFT_NODE_POLL_SECONDS"):
            poll_seconds()


def test_fedpeft_supernode_starts_flower_s_supernode_through_the_capped_loop():
    cmd = supernode_command("127.0.0.1:8000", 0, 2)
    assert cmd[1:3] == ["-m", "fedpeft.deploy.node_loop"] and "--superlink" in cmd
