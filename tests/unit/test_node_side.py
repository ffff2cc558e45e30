"""What a node reads from its node config: which client it holds, where its rows are (its own file, its
entry of data.client_files, or the shared split), and the memory settings it may change."""

import pytest

from fedpeft.config import load_config
from fedpeft.config.recipes import ConfigError
from fedpeft.experiment.node import client_id, node_files, node_settings


def config(*overrides):
    return load_config("default", ["model.name=builtin:micro", *overrides])


def test_a_node_holds_the_client_of_its_partition_id_and_says_so_when_it_has_none():
    assert client_id({"partition-id": 3}) == 3
    with pytest.raises(ConfigError, match="no whole-number 'partition-id'.*--partition-id N"):
        client_id({"data-file": "a.jsonl"})


def test_a_node_with_its_own_file_reads_it_and_hides_its_content_from_messages():
    files = node_files(config(), {"partition-id": 1, "data-file": "/srv/private/rows.jsonl", "schema": "dolly"})
    assert (files.file, files.schema, files.redact) == ("/srv/private/rows.jsonl", "dolly", True)
    assert files.where == "node 1's data-file 'rows.jsonl'"  # the server learns the name, not the path


def test_a_rehearsal_node_reads_its_entry_of_client_files():
    c = config("fl.clients=2", "data.schema=dolly", "data.client_files=[a.jsonl,b.jsonl]")
    files = node_files(c, {"partition-id": 1})
    assert (files.file, files.where, files.redact) == ("b.jsonl", "data.client_files[1] 'b.jsonl'", False)
    with pytest.raises(ConfigError, match="partition-id=2 is not a client of data.client_files"):
        node_files(c, {"partition-id": 2})
    assert node_files(config(), {"partition-id": 0}) is None  # the shared source's split


def test_node_data_runs_refuse_a_node_without_a_file():
    c = config("runtime=flower-deployment", "data.node_data=true")
    with pytest.raises(ConfigError, match="has no 'data-file'.*fedpeft supernode --data FILE"):
        node_files(c, {"partition-id": 0})


def test_a_node_may_change_memory_settings_but_not_the_mathematics():
    c = config("train.batch_size=8", "train.micro_batch_size=8")
    mine = node_settings(c, {"device": "cpu", "micro-batch-size": 2, "gradient-checkpointing": True})
    assert (mine.model.device, mine.train.micro_batch_size, mine.train.gradient_checkpointing) == ("cpu", 2, True)
    assert mine.train.batch_size == 8 and mine.train.lr == c.train.lr
    assert node_settings(c, {"partition-id": 0}) is c
    with pytest.raises(ConfigError, match="node config.*micro-batch-size"):
        node_settings(c, {"micro-batch-size": 3})


def test_what_needs_clients_rows_on_the_server_is_refused_when_they_keep_them(tmp_path):
    """Checked before anything loads: a threshold chosen on the clients' pooled validation rows, and SecAgg+'s
    weight range from their row counts, need what a server whose clients keep their files never gets."""
    from fedpeft.data.federated import FederatedData
    from fedpeft.experiment.checks import check_data_fits_task, holds_client_rows

    node = ["runtime=flower-deployment", "data.node_data=true", "data.schema=dolly"]
    assert not holds_client_rows(config(*node))
    files = ["fl.clients=2", "data.schema=dolly", "data.client_files=[a.jsonl,b.jsonl]"]
    assert holds_client_rows(config(*files)) and not holds_client_rows(config(*files, "runtime=flower-sim"))
    empty = FederatedData(test=[], clients=[])
    with pytest.raises(ConfigError, match="secure_aggregation.*does not hold"):
        check_data_fits_task(config(*node, "flower.secure_aggregation=true", "fl.fraction=1"), empty)
    clone = ["runtime=flower-deployment", "data.node_data=true", "data.task=clone", "data.schema=codexglue_clone"]
    with pytest.raises(ConfigError, match="data.task=clone chooses its decision threshold"):
        check_data_fits_task(config(*clone), empty)
