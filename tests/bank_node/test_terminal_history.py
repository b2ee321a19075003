"""The node's pooled consortium terminal history: kept per key generation, days replaced whole,
stale days found, old days and rotated keys dropped, missing days refused."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date

import numpy as np
import pytest

from bank_node.features import NS_PER_DAY
from bank_node.federated.terminal_stats import ConsortiumHistory
from bank_node.store import TransactionStore
from bank_node.terminal_history import PooledHistory, pooling_scope, terminal_key
from tests.consortium.conftest import database_url  # noqa: F401 - SQLite and PostgreSQL

DAY = 17_700  # 2018-06-17


def history(days: list[int], *, per_day: int, presence: dict[int, int], salt: int = 0) -> ConsortiumHistory:
    rng = np.random.default_rng(salt)
    tags, times, counts, frauds = [], [], [], []
    for d in days:
        tags.append(rng.choice(sorted(presence), per_day))
        times.append(d * NS_PER_DAY + rng.integers(0, 86_400, per_day) * 10**9)
        count = rng.integers(1, 4, per_day)
        counts.append(count)
        frauds.append(np.minimum(count, rng.integers(0, 2, per_day)))
    def cat(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)
    return ConsortiumHistory(tag=cat(tags), time_ns=cat(times), count=cat(counts), frauds=cat(frauds),
                             presence_tags=np.array(sorted(presence), np.int64),
                             presence_banks=np.array([presence[t] for t in sorted(presence)], np.int64),
                             days=tuple(days), threshold=3)


@pytest.fixture
def pooled(database_url: str) -> Iterator[PooledHistory]:  # noqa: F811
    store = TransactionStore(database_url)  # the tables live beside the transactions
    yield PooledHistory(store.engine)
    store.close()


def _sorted(h: ConsortiumHistory) -> np.ndarray:
    rows = np.stack([h.time_ns, h.tag, h.count, h.frauds], axis=1)
    return rows[np.lexsort(rows.T[::-1])]


def test_nights_add_days_and_the_loaded_history_is_what_was_pooled(pooled: PooledHistory) -> None:
    presence = {11: 3, 22: 2, 33: 5}
    first = history([DAY, DAY + 1, DAY + 2], per_day=50, presence=presence, salt=1)
    pooled.save("key-a", first, banks=["b1", "b2", "b3"], run_id="run-1", labels_until=DAY + 10)
    second = history([DAY + 3], per_day=40, presence={**presence, 44: 3}, salt=2)
    pooled.save("key-a", second, banks=["b1", "b2", "b3"], run_id="run-2", labels_until=DAY + 10)

    loaded = pooled.load("key-a", [DAY, DAY + 1, DAY + 2, DAY + 3], threshold=3)
    expected = np.concatenate([_sorted(first), _sorted(second)])
    np.testing.assert_array_equal(_sorted(loaded), expected[np.lexsort(expected.T[::-1])])
    # Presence is the last night's (it covers the whole period), and the threshold applies to it.
    assert loaded.eligible([11, 22, 33, 44, 55]).tolist() == [True, False, True, True, False]
    assert pooled.stale_days("key-a", range(DAY, DAY + 5), ["b1", "b2", "b3"], labels_until=DAY + 10) == {DAY + 4}
    # A day pooled with other banks than tonight's is pooled again.
    assert pooled.stale_days("key-a", range(DAY, DAY + 4), ["b1", "b2", "b3", "b4"],
                             labels_until=DAY + 10) == set(range(DAY, DAY + 4))


def test_a_day_pooled_again_replaces_its_events_and_old_days_are_dropped(pooled: PooledHistory) -> None:
    presence = {11: 3, 22: 4}
    pooled.save("key-a", history([DAY, DAY + 1], per_day=30, presence=presence, salt=1), banks=["b1", "b2", "b3"],
                run_id="run-1", labels_until=DAY + 10)
    again = history([DAY + 1], per_day=7, presence=presence, salt=9)
    pooled.save("key-a", again, banks=["b1", "b2", "b3", "b4"], run_id="run-2", labels_until=DAY + 10,
                keep_from=DAY + 1)
    assert pooled.pooled("key-a") == {DAY + 1: frozenset({"b1", "b2", "b3", "b4"})}
    np.testing.assert_array_equal(_sorted(pooled.load("key-a", [DAY + 1], threshold=3)), _sorted(again))
    with pytest.raises(ValueError, match="no consortium terminal events of 1 day"):
        pooled.load("key-a", [DAY], threshold=3)


def test_a_new_key_generation_drops_the_old_tags(pooled: PooledHistory) -> None:
    pooled.save("key-a", history([DAY], per_day=10, presence={1: 3}), banks=["b1", "b2", "b3"], run_id="run-1", labels_until=DAY + 10)
    pooled.save("key-b", history([DAY + 1], per_day=10, presence={2: 3}), banks=["b1", "b2", "b3"], run_id="run-2", labels_until=DAY + 10)
    assert pooled.pooled("key-a") == {}
    assert pooled.stale_days("key-b", [DAY, DAY + 1], ["b1", "b2", "b3"], labels_until=DAY + 10) == {DAY}


def test_the_terminal_key_comes_from_the_secret_context_only() -> None:
    assert terminal_key(b"secret context") == terminal_key(b"secret context")
    assert terminal_key(b"secret context") != terminal_key(b"secret context.")
    assert len(terminal_key(b"x")) == 32
    with pytest.raises(ValueError):
        terminal_key(b"")


def test_the_pooling_scope_reaches_from_the_lookback_to_what_scoring_needs_until_the_next_night() -> None:
    scope = pooling_scope(date(2018, 6, 1), date(2018, 6, 15), date(2018, 6, 22))
    first = (date(2018, 6, 1) - date(1970, 1, 1)).days - 37
    # A transaction scored on 2018-06-23 (before the next run) reaches 2018-06-16 (7 days' delay).
    assert scope.days == tuple(range(first, (date(2018, 6, 17) - date(1970, 1, 1)).days))
    assert scope.labels_until == (date(2018, 6, 15) - date(1970, 1, 1)).days
    with pytest.raises(ValueError, match="no day to pool"):
        pooling_scope(date(2018, 6, 1), date(2018, 4, 1), date(2018, 4, 1))


def test_a_day_pooled_before_its_labels_were_known_is_pooled_again_once_they_are(pooled: PooledHistory) -> None:
    # Pooled on a night when labels were known before DAY: DAY and DAY + 1 carried unknown labels.
    pooled.save("key-a", history([DAY - 1, DAY, DAY + 1], per_day=5, presence={1: 3}), banks=["b1", "b2", "b3"],
                run_id="run-1", labels_until=DAY)
    banks = ["b1", "b2", "b3"]
    assert pooled.stale_days("key-a", [DAY - 1, DAY, DAY + 1], banks, labels_until=DAY) == set()
    assert pooled.stale_days("key-a", [DAY - 1, DAY, DAY + 1], banks, labels_until=DAY + 1) == {DAY}
    pooled.save("key-a", history([DAY], per_day=5, presence={1: 3}), banks=banks, run_id="run-2",
                labels_until=DAY + 1)
    assert pooled.stale_days("key-a", [DAY - 1, DAY, DAY + 1], banks, labels_until=DAY + 1) == set()


def test_a_corrupt_stored_day_is_refused_not_misread(pooled: PooledHistory) -> None:
    from sqlalchemy import update

    from bank_node.terminal_history import pooled_days

    pooled.save("key-a", history([DAY], per_day=10, presence={1: 3}), banks=["b1", "b2", "b3"], run_id="run-1", labels_until=DAY + 10)
    with pooled.engine.begin() as connection:
        connection.execute(update(pooled_days).values(data=b"\x05" + b"\x00" * 20))
    with pytest.raises(ValueError, match="truncated or corrupt"):
        pooled.load("key-a", [DAY], threshold=3)
