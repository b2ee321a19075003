"""The node's transaction store: daily files in, labels later, nothing twice, bad files change
nothing, and the agent's training rows from it equal those from the whole file."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from bank_node.agent.cli import bank_cli
from bank_node.agent.training import StoreSource, TransactionSource
from bank_node.data import load_labels, load_transactions
from bank_node.generator import generate_transactions
from bank_node.store import TransactionStore, file_sha256
from schemas.errors import FedfraudInputError
from schemas.run import RunWindow
from tests.consortium.conftest import database_url  # noqa: F401 - SQLite and PostgreSQL

START = "2018-04-01"


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    """Six weeks of simulated transactions in the handbook's columns (with TX_FRAUD)."""
    return generate_transactions(n_customers=300, n_terminals=500, days=42, seed=3, start_date=START)


@pytest.fixture
def store(database_url: str) -> Iterator[TransactionStore]:  # noqa: F811
    opened = TransactionStore(database_url)
    yield opened
    opened.close()


def _day_files(raw: pd.DataFrame, folder: Path, *, with_labels: bool) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    days = pd.to_datetime(raw["TX_DATETIME"]).dt.date
    for day in sorted(days.unique()):
        part = raw[(days == day).to_numpy()]
        if not with_labels:
            part = part.drop(columns=["TX_FRAUD"])
        path = folder / f"{day}.parquet"
        part.to_parquet(path)
        files.append(path)
    return files


def _ingest(store: TransactionStore, path: Path) -> object:
    return store.ingest(load_transactions(path).frame, name=str(path), sha256=file_sha256(path), retention_days=None)


def test_daily_files_are_stored_once_and_training_rows_match_the_whole_file(
    store: TransactionStore, raw: pd.DataFrame, tmp_path: Path
) -> None:
    files = _day_files(raw, tmp_path / "days", with_labels=True)
    results = [_ingest(store, path) for path in files]
    assert sum(r.added for r in results) == len(raw)  # type: ignore[attr-defined]
    again = _ingest(store, files[3])
    assert again.file_seen_before and again.added == 0  # type: ignore[attr-defined]
    # Another file holding rows already stored (an export that overlaps yesterday's) adds only the new ones.
    overlap = tmp_path / "overlap.parquet"
    pd.concat([pd.read_parquet(files[4]), pd.read_parquet(files[5])]).to_parquet(overlap)
    assert _ingest(store, overlap).added == 0  # type: ignore[attr-defined]
    assert store.summary()["transactions"] == len(raw)

    window = RunWindow(as_of=date(2018, 5, 6), train_days=7, validation_days=7, label_delay_days=7)
    whole = tmp_path / "whole.parquet"
    raw.to_parquet(whole)
    from_store = StoreSource(store).rows(window)
    from_file = TransactionSource(whole, train_start=None, train_days=7).rows(window)
    np.testing.assert_array_equal(from_store.X, from_file.X)
    np.testing.assert_array_equal(from_store.y, from_file.y)
    assert len(from_store.y) > 1000


def test_labels_arrive_later_and_unknown_ones_change_nothing(
    store: TransactionStore, raw: pd.DataFrame, tmp_path: Path
) -> None:
    files = _day_files(raw.iloc[:2000], tmp_path / "days", with_labels=False)
    for path in files:
        _ingest(store, path)
    assert store.summary()["labelled"] == 0
    labels = raw.iloc[:2000][["TRANSACTION_ID", "TX_FRAUD"]]
    first = tmp_path / "labels-1.csv"
    labels.iloc[:1500].to_csv(first, index=False)
    result = store.record_labels(load_labels(first), name=str(first), sha256=file_sha256(first))
    assert result.updated == 1500 and store.summary()["labelled"] == 1500
    stray = tmp_path / "labels-2.csv"
    pd.concat([labels.iloc[1500:], pd.DataFrame({"TRANSACTION_ID": [10**12], "TX_FRAUD": [1]})]).to_csv(stray, index=False)
    with pytest.raises(FedfraudInputError, match="1 labels are for transactions this node does not hold"):
        store.record_labels(load_labels(stray), name=str(stray), sha256=file_sha256(stray))
    assert store.summary()["labelled"] == 1500
    skipped = store.record_labels(load_labels(stray), name=str(stray), sha256=file_sha256(stray), skip_unknown=True)
    assert (skipped.updated, skipped.unknown) == (500, 1) and store.summary()["labelled"] == 2000
    frauds = store.between(datetime(2018, 1, 1), datetime(2019, 1, 1))["label"].sum()
    assert frauds == raw.iloc[:2000]["TX_FRAUD"].sum()


def test_retention_and_one_cards_history(store: TransactionStore, raw: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "all.parquet"
    raw.to_parquet(path)
    result = store.ingest(load_transactions(path).frame, name="all", sha256=file_sha256(path), retention_days=14)
    newest = pd.to_datetime(raw["TX_DATETIME"]).max()
    kept = int((pd.to_datetime(raw["TX_DATETIME"]) >= newest - pd.Timedelta(days=14)).sum())
    assert store.summary()["transactions"] == kept and result.deleted_by_retention == len(raw) - kept
    card = int(raw["CUSTOMER_ID"].iloc[-1])
    history = store.related([card], datetime(2018, 1, 1), [], datetime(2018, 1, 1), until=datetime(2019, 1, 1))
    assert 0 < len(history) == int((raw["CUSTOMER_ID"].iloc[-kept:] == card).sum())
    assert set(history["customer_id"]) == {card}


def test_the_command_line_ingests_labels_and_refuses_a_bad_file_whole(raw: pd.DataFrame, tmp_path: Path) -> None:
    state = tmp_path / "node"
    day = tmp_path / "day.csv"
    raw.iloc[:300].drop(columns=["TX_FRAUD"]).to_csv(day, index=False)
    runner = CliRunner()
    done = runner.invoke(bank_cli, ["ingest", str(day), "--state-dir", str(state)])
    assert done.exit_code == 0 and "300 transactions added" in done.output, done.output
    again = runner.invoke(bank_cli, ["ingest", str(day), "--state-dir", str(state)])
    assert "ingested before; nothing added" in again.output
    bad = tmp_path / "bad.csv"
    broken = raw.iloc[300:600].copy()
    broken.loc[broken.index[7], "TX_AMOUNT"] = -5
    broken.to_csv(bad, index=False)
    refused = runner.invoke(bank_cli, ["ingest", str(bad), "--state-dir", str(state)])
    assert refused.exit_code != 0 and "amount" in refused.output and "Traceback" not in refused.output
    labels = tmp_path / "labels.csv"
    raw.iloc[:300][["TRANSACTION_ID", "TX_FRAUD"]].to_csv(labels, index=False)
    recorded = runner.invoke(bank_cli, ["labels", str(labels), "--state-dir", str(state)])
    assert recorded.exit_code == 0 and "labels recorded" in recorded.output, recorded.output
    # The same file again changes nothing, and says so rather than counting its labels unchanged.
    again = runner.invoke(bank_cli, ["labels", str(labels), "--state-dir", str(state)])
    assert again.exit_code == 0 and "recorded before (same SHA-256): nothing changed" in again.output, again.output
    store = TransactionStore.in_state_dir(state)
    try:
        assert store.summary()["transactions"] == 300 and store.summary()["labelled"] == 300
    finally:
        store.close()


def test_a_reader_following_versions_misses_no_write_of_concurrent_writers(
    store: TransactionStore, raw: pd.DataFrame
) -> None:
    """Scoring workers keep recent rows in memory and read only the versions after the last one
    they saw: with writers racing (each its own connection), a reader polling all along must end
    up with every row, and a relabelled row must come back with its new label."""
    import threading
    import time

    from schemas.transaction import to_canonical

    frame = to_canonical(raw.iloc[:400].drop(columns=["TX_FRAUD"]), None)
    seen: dict[int, float] = {}
    version = 0
    done = threading.Event()

    def read() -> None:
        nonlocal version
        while True:
            finished = done.is_set()
            changed, version = store.changes(version, limit=50)
            seen.update((row[0], row[-1]) for row in changed)
            if finished and not changed:
                return
            time.sleep(0.002)

    def write(rows: pd.DataFrame) -> None:
        writer = TransactionStore(store.url)
        for i in range(len(rows)):
            writer.record(rows.iloc[[i]])
        writer.close()

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=write, args=(frame.iloc[part],)) for part in np.array_split(np.arange(len(frame)), 4)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    done.set()
    reader.join(timeout=60)
    assert sorted(seen) == sorted(frame["transaction_id"].tolist())
    assert all(label is None for label in seen.values())

    relabelled = frame.iloc[:5].assign(label=1)[["transaction_id", "label"]]
    store.record_labels(relabelled, name="labels", sha256="9" * 64)
    changed, newer = store.changes(version, limit=50)
    assert newer > version and sorted(row[0] for row in changed) == sorted(relabelled["transaction_id"])
    assert all(row[-1] == 1 for row in changed)


def test_rows_the_scoring_path_records_read_back_as_the_frame_path_writes_them(tmp_path: Path) -> None:
    """The scoring service records rows through the SQLite driver, timestamps written many at
    once; they must read back exactly (to the microsecond, floored) and sort and compare in the
    database like rows the ordinary path writes."""
    rng = np.random.default_rng(5)
    ns = np.concatenate([[0, 999, 1_000, 951_782_400_000_000_000, 1_533_081_599_999_999_999],
                         rng.integers(0, 4_102_444_800 * 10**9, 200)]).tolist()
    fast = TransactionStore(f"sqlite:///{tmp_path / 'fast.db'}")
    assert fast._driver is not None and fast._driver._numpy_text  # the quick path is the one tested
    assert fast._driver.bind_timestamps(ns) == [fast._driver.bind_timestamp(datetime(1970, 1, 1) + pd.Timedelta(
        microseconds=v // 1000).to_pytimedelta()) for v in ns]
    fast.record_rows([(i, v, 7, 8, 1.5) for i, v in enumerate(ns)])
    plain = TransactionStore(f"sqlite:///{tmp_path / 'plain.db'}")
    plain.record(pd.DataFrame({"transaction_id": range(len(ns)), "timestamp": pd.to_datetime(ns).floor("us"),
                               "customer_id": 7, "terminal_id": 8, "amount": 1.5}))
    since = datetime(2000, 1, 1)
    for store in (fast, plain):
        rows, _ = store.recent(since)
        assert sorted(rows["transaction_id"]) == sorted(i for i, v in enumerate(ns) if v >= 946_684_800 * 10**9)
    fast_rows = fast.recent(datetime(1970, 1, 1))[0].sort_values("transaction_id").reset_index(drop=True)
    plain_rows = plain.recent(datetime(1970, 1, 1))[0].sort_values("transaction_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(fast_rows, plain_rows)
    assert (fast_rows["timestamp"].astype("datetime64[ns]").astype("int64") == np.asarray(ns) // 1000 * 1000).all()
    # A scoring worker's start reads the recent rows through the driver too: the same frame as
    # the ordinary path reads from the same database.
    ordinary = TransactionStore(f"sqlite:///{tmp_path / 'fast.db'}")
    ordinary._driver = None
    for since in (datetime(1970, 1, 1), datetime(2000, 2, 29), datetime(2100, 1, 1)):
        driven, version = fast.recent(since)
        read, same_version = ordinary.recent(since)
        assert version == same_version
        if len(read):
            pd.testing.assert_frame_equal(driven, read)
        else:
            assert driven.empty
    # An agent's reads of a window (labels and all): the same frame both ways, in the same order.
    fast.record_labels(pd.DataFrame({"transaction_id": [0, 5, 9], "label": [1, 0, 1]}), name="labels", sha256="c" * 64)
    for start, end in ((datetime(1970, 1, 1), datetime(2100, 1, 1)), (datetime(2000, 2, 29), datetime(2030, 1, 1)),
                       (datetime(2100, 1, 1), datetime(2101, 1, 1))):
        driven = fast.between(start, end)
        read = ordinary.between(start, end)
        assert list(driven.columns) == list(read.columns)
        if len(read):
            pd.testing.assert_frame_equal(driven, read)
            assert driven["label"].notna().sum() == read["label"].notna().sum()
        else:
            assert driven.empty
    ordinary.close()
    # What scoring workers read to keep in step: the same instants, as nanoseconds.
    changed, _ = fast.changes(0, limit=1000)
    assert sorted((row[0], row[1]) for row in changed) == [(i, v // 1000 * 1000) for i, v in enumerate(ns)]
    fast.close()
    plain.close()


def test_a_failed_statements_message_holds_no_bound_value(store: TransactionStore) -> None:
    """What an error handler logs of a database failure names the statement, never the values
    bound to it (a card, an amount)."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    with pytest.raises(DBAPIError) as failed, store.engine.connect() as connection:
        connection.execute(text("SELECT amount FROM transactions WHERE customer_id = :card AND no_such_column = 1"),
                           {"card": 4111111111111111})
    assert "no_such_column" in str(failed.value)
    assert "4111111111111111" not in str(failed.value)
