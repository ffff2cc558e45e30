import numpy as np
import pytest

from fedpeft.data.partition import (
    PartitionError,
    category_table,
    partition_dirichlet,
    partition_iid,
    partition_natural,
    partition_quantity,
    partition_rows,
    partition_shards,
)


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


def categories_per_client(cats, parts):
    return np.mean([len(row) for row in category_table(cats, parts).values()])


def test_dirichlet_is_a_cover_and_small_alpha_is_more_skewed():
    cats = [f"m{i % 8}" for i in range(800)]
    skewed = partition_dirichlet(cats, 10, 0.05, np.random.default_rng(0))
    even = partition_dirichlet(cats, 10, 100.0, np.random.default_rng(0))
    for parts in (skewed, even):
        assert sorted(np.concatenate(parts).tolist()) == list(range(800))
    assert categories_per_client(cats, skewed) < 4 < categories_per_client(cats, even)


def test_dirichlet_meets_min_size_or_names_the_smallest_client():
    cats = [f"m{i % 4}" for i in range(400)]
    parts = partition_dirichlet(cats, 8, 0.3, np.random.default_rng(1), min_size=10)
    assert min(len(p) for p in parts) >= 10
    with pytest.raises(PartitionError, match=r"left client-\d+ with \d+ rows, below the minimum of 60.*fewer clients"):
        partition_dirichlet(cats, 8, 0.3, np.random.default_rng(1), min_size=60, max_attempts=5)


def test_quantity_skew_follows_the_sequential_uniform_rule():
    parts = partition_quantity(1000, 4, 0.1, 0.5, np.random.default_rng(5))
    # Replay the same draws by hand: shuffle, then each client takes round(u * remaining).
    rng = np.random.default_rng(5)
    remaining = len(rng.permutation(1000))
    expected = []
    for _ in range(3):
        take = int(round(rng.uniform(0.1, 0.5) * remaining))
        expected.append(take)
        remaining -= take
    expected.append(remaining)
    assert [len(p) for p in parts] == expected
    assert sorted(np.concatenate(parts).tolist()) == list(range(1000))
    with pytest.raises(PartitionError, match="quantity_range"):
        partition_quantity(10, 2, 0.5, 0.2, np.random.default_rng(0))


def test_natural_packs_whole_categories_largest_first():
    cats = ["a"] * 5 + ["b"] * 3 + ["c"] * 2 + ["d"] * 2
    parts = partition_natural(cats, 2)
    table = category_table(cats, parts)
    # a -> client-0 (5); b -> client-1 (3); c -> client-1 (5); d: tie, lowest id -> client-0 (7).
    assert table == {"client-0": {"a": 5, "d": 2}, "client-1": {"b": 3, "c": 2}}
    with pytest.raises(PartitionError, match="4 categories for fl.clients=5"):
        partition_natural(cats, 5)


def test_partition_rows_enforces_min_size_and_knows_its_methods():
    cats = [f"m{i % 3}" for i in range(30)]
    with pytest.raises(PartitionError, match=r"client-\d+ has \d+ rows, below data.min_client_size=20"):
        partition_rows("iid", cats, 3, np.random.default_rng(0), min_size=20)
    with pytest.raises(PartitionError, match="unknown data.partition 'zipf'; valid: iid, shards, dirichlet"):
        partition_rows("zipf", cats, 3, np.random.default_rng(0))
    assert len(partition_rows("natural", cats, 3, np.random.default_rng(0), min_size=10)) == 3
