"""A real federation on 127.0.0.1 (issue 16): three SuperNodes, each started with only its own file
(`fedpeft supernode --data`), and a server that holds none (`data.node_data`), give the run the local runtime
computes with `data.client_files` over the same files: the global adapter, the clients' validation metrics
and the bytes. A member whose file is broken fails alone, named without the file's content, and the run goes
on under `fl.min_clients`. A member may change its micro-batch size without changing the result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedpeft.experiment.run import run_experiment
from fedpeft.testing import LoopbackFederation
from tests.integration.conftest import assert_updates_agree
from tests.integration.test_client_files import client_files, overrides, records
from tests.integration.test_flower_runtime import adapter

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


@pytest.fixture
def federation(tmp_path):
    fed = LoopbackFederation(tmp_path / "federation")
    try:
        yield fed
    finally:
        fed.stop()
    assert not fed.survivors()


def deployed(micro_config, files: list[Path], federation: LoopbackFederation, *extra: str):
    """The deployment's config: the clients' file names are nowhere in it."""
    rehearsal = [o for o in overrides(files) if not o.startswith("data.client_files")]
    return micro_config(
        *rehearsal,
        "runtime=flower-deployment",
        "data.node_data=true",
        f"flower.superlink={federation.address}",
        "flower.round_timeout=300",
        *extra,
    )


def test_three_members_with_their_own_files_give_the_local_rehearsal_s_run(micro_config, tmp_path, federation):
    (tmp_path / "federation").mkdir()
    files = client_files(tmp_path)
    local_dir, local = run_experiment(micro_config(*overrides(files)), quiet=True)
    federation.superlink()
    for i, path in enumerate(files):
        federation.supernode(i, len(files), node_config={"data-file": str(path), "schema": "dolly"})
    flower_dir, flower = run_experiment(deployed(micro_config, files, federation), quiet=True)
    assert "client-0.jsonl" not in (flower_dir / "config.yaml").read_text()
    assert flower["status"] == "completed"
    a, b = adapter(local_dir), adapter(flower_dir)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-7)
    assert flower["bytes_up"] == local["bytes_up"] and flower["bytes_down"] == local["bytes_down"]
    for x, y in zip(records(local_dir, "round"), records(flower_dir, "round"), strict=True):
        assert set(x["client_eval"]) == set(y["client_eval"]) == {"client-0", "client-1", "client-2"}
        for client, metrics in x["client_eval"].items():
            for name, value in metrics.items():
                assert y["client_eval"][client][name] == pytest.approx(value, rel=1e-5)


def test_a_member_on_a_smaller_machine_changes_its_memory_not_the_result(micro_config, tmp_path, federation):
    """Member 1 trains in micro-batches of 1 (gradient accumulation keeps train.batch_size=4): the float sums
    come in another order, so the result agrees within what AdamW allows (conftest.assert_updates_agree);
    without dropout, since its masks are drawn per micro-batch."""
    (tmp_path / "federation").mkdir()
    files = client_files(tmp_path)
    same = ["fl.rounds=1", "peft.dropout=0.0"]
    local_dir, _ = run_experiment(micro_config(*overrides(files), *same), quiet=True)
    federation.superlink()
    for i, path in enumerate(files):
        node = {"data-file": str(path), "schema": "dolly", **({"micro-batch-size": 1} if i == 1 else {})}
        federation.supernode(i, len(files), node_config=node)
    flower_dir, flower = run_experiment(deployed(micro_config, files, federation, *same), quiet=True)
    assert flower["status"] == "completed"
    config = micro_config(*overrides(files), *same)
    assert_updates_agree(adapter(local_dir), adapter(flower_dir), lr=config.train.lr, steps=config.train.max_steps)


def test_a_member_with_a_broken_file_fails_alone_and_the_run_goes_on(micro_config, tmp_path, federation):
    (tmp_path / "federation").mkdir()
    files = client_files(tmp_path)
    secret = "the member's private words"
    files[2].write_text(json.dumps({"instruction": secret, "context": "", "category": "x"}) + "\n{not json\n")
    federation.superlink()
    for i, path in enumerate(files):
        federation.supernode(i, len(files), node_config={"data-file": str(path), "schema": "dolly"})
    run_dir, summary = run_experiment(deployed(micro_config, files, federation, "fl.min_clients=2"), quiet=True)
    assert summary["status"] == "completed"
    failures = records(run_dir, "client_failure")
    assert {f["client"] for f in failures} == {2} and {f["round"] for f in failures} == {1, 2}
    for failure in failures:
        assert "node 2's data-file 'client-2.jsonl'" in failure["reason"], failure
        assert secret not in failure["reason"] and str(files[2].parent) not in failure["reason"]
    assert all(r["clients"] == [0, 1] for r in records(run_dir, "round")[1:])
