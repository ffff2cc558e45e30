import numpy as np
import pytest

from fedpeft.data.partition import PartitionError, category_table, partition_iid, partition_shards


def test_iid_is_a_disjoint_cover_of_near_equal_size():
    parts = partition_iid(103, 10, np.random.default_rng(1))
    assert sorted(np.concatenate(parts).tolist()) == list(range(103))
    assert {len(p) for p in parts} == {10, 11}


def test_shards_give_each_client_at_most_two_categories_when_categories_align():
    # 8 categories of 25 rows, 4 clients x 2 shards = 8 shards of exactly one category each.
    cats = [f"m{i // 25}" for i in range(200)]
    parts = partition_shards(cats, 4, 2, np.random.default_rng(0))
    assert sorted(np.concatenate(parts).tolist()) == list(range(200))
    table = category_table(cats, parts)
    assert all(len(row) == 2 and sum(row.values()) == 50 for row in table.values())


def test_shards_are_seeded():
    cats = [f"m{i % 7}" for i in range(100)]
    a = partition_shards(cats, 5, 2, np.random.default_rng(3))
    b = partition_shards(cats, 5, 2, np.random.default_rng(3))
    c = partition_shards(cats, 5, 2, np.random.default_rng(4))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_too_many_clients_is_an_error():
    with pytest.raises(PartitionError, match="fl.clients=11 is more than the 10 training rows"):
        partition_iid(10, 11, np.random.default_rng(0))
    with pytest.raises(PartitionError, match="cannot be cut into 12 shards"):
        partition_shards(["a"] * 10, 6, 2, np.random.default_rng(0))
