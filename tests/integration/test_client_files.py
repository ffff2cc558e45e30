"""Clients that bring their own files (issue 16): a rehearsal with ``data.client_files`` on the local runtime
and on flower-sim gives the same run, the flower-sim server never opens a client's file (a Python audit
hook in the ServerApp's process, which is this one), the clients' validation metrics come back from where
their rows are, and one client with a broken file fails alone while the round goes on."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from fedpeft.experiment.run import run_experiment
from tests.integration.test_flower_runtime import assert_same_run, ray_processes_after_shutdown

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "dolly.jsonl"
pytestmark = pytest.mark.usefixtures("one_thread")

OPENED: list[str] = []
WATCHED: set[str] = set()


def _record_opens(event: str, args: tuple) -> None:
    if event == "open" and args and isinstance(args[0], str | bytes | Path):
        path = str(Path(args[0] if not isinstance(args[0], bytes) else args[0].decode(errors="replace")).resolve())
        if path in WATCHED:
            OPENED.append(path)


sys.addaudithook(_record_opens)  # audit hooks cannot be removed; it records only while WATCHED is set


def client_files(tmp_path: Path, n: int = 3) -> list[Path]:
    """The fixture's rows dealt out to ``n`` clients, one file each."""
    lines = FIXTURE.read_text().splitlines()
    paths = []
    for i in range(n):
        path = tmp_path / f"client-{i}.jsonl"
        path.write_text("\n".join(lines[i::n]) + "\n")
        paths.append(path)
    return paths


def overrides(files: list[Path], *extra: str) -> list[str]:
    return [
        f"fl.clients={len(files)}",
        "fl.fraction=1.0",
        "fl.rounds=2",
        "train.max_steps=2",
        "train.batch_size=4",
        "train.micro_batch_size=2",
        "data.schema=dolly",
        f"data.client_files=[{','.join(str(f) for f in files)}]",
        *extra,
    ]


def records(run_dir: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["type"] == kind]


@pytest.mark.slow
def test_a_flower_sim_rehearsal_equals_the_local_run_and_its_server_opens_no_client_file(micro_config, tmp_path):
    files = client_files(tmp_path)
    local_dir, local = run_experiment(micro_config(*overrides(files)), quiet=True)
    WATCHED.update(str(f.resolve()) for f in files)
    try:
        flower_dir, flower = run_experiment(micro_config(*overrides(files, "runtime=flower-sim")), quiet=True)
    finally:
        WATCHED.clear()
    assert OPENED == [], f"the ServerApp's process opened client files: {sorted(set(OPENED))}"
    assert_same_run(local_dir, local, flower_dir, flower)
    # Every client's validation metrics came back, the same numbers as computed in one process.
    for a, b in zip(records(local_dir, "round"), records(flower_dir, "round"), strict=True):
        assert a["client_eval"] == b["client_eval"] and set(a["client_eval"]) == {"client-0", "client-1", "client-2"}
        assert a["eval"] == b["eval"]
    assert not ray_processes_after_shutdown()


def test_without_a_server_test_split_the_eval_is_the_clients_example_weighted_validation(micro_config, tmp_path):
    files = client_files(tmp_path)
    run_dir, summary = run_experiment(micro_config(*overrides(files)), quiet=True)
    last = records(run_dir, "round")[-1]
    assert summary["status"] == "completed" and set(last["client_eval"]) == {"client-0", "client-1", "client-2"}
    losses = [last["client_eval"][f"client-{i}"]["loss"] for i in range(3)]
    assert min(losses) <= last["eval"]["loss"] <= max(losses)


@pytest.mark.slow
def test_a_client_whose_file_is_broken_fails_alone_on_flower_sim(micro_config, tmp_path):
    files = client_files(tmp_path)
    files[2].write_text('{"instruction": "no closing brace"\n')
    config = micro_config(*overrides(files, "runtime=flower-sim", "fl.min_clients=2"))
    run_dir, summary = run_experiment(config, quiet=True)
    assert summary["status"] == "completed"
    failures = records(run_dir, "client_failure")
    assert {f["round"] for f in failures} == {1, 2} and {f["client"] for f in failures} == {2}
    assert all("data.client_files[2]" in f["reason"] for f in failures), failures
    assert all(r["clients"] == [0, 1] for r in records(run_dir, "round")[1:])
    assert not ray_processes_after_shutdown()
