"""Online features of transactions scored in time order equal the batch features over the same
history: the batch code path (``compute_features``) over just the rows the windows reach, and
a single transaction read straight off the held rows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bank_node.features import FEATURE_COLUMNS, FeatureConfig, compute_features, feature_columns, model_matrix
from bank_node.generator import generate_transactions
from bank_node.online import NewTransactions, OnlineFeatures
from bank_node.recent import SUM_ROWS_MAX, RecentTransactions
from bank_node.store import TransactionStore
from schemas.errors import FedfraudInputError
from schemas.transaction import to_canonical

WEEK = pd.Timestamp("2018-05-16")


@pytest.fixture(scope="module")
def transactions() -> pd.DataFrame:
    raw = generate_transactions(n_customers=400, n_terminals=600, days=52, seed=11, start_date="2018-04-01")
    return to_canonical(raw, None, require_label=True).sort_values(["timestamp", "transaction_id"])


@pytest.fixture
def store(tmp_path: Path, transactions: pd.DataFrame) -> Iterator[TransactionStore]:
    opened = TransactionStore(f"sqlite:///{tmp_path / 'node.db'}")
    history = transactions[transactions["timestamp"] < WEEK]
    opened.ingest(history, name="history", sha256="0" * 64, retention_days=None)
    yield opened
    opened.close()


def test_scoring_in_time_order_gives_the_batch_features(store: TransactionStore, transactions: pd.DataFrame) -> None:
    week = transactions[transactions["timestamp"] >= WEEK].drop(columns=["label"])
    online = OnlineFeatures(store)
    parts = []
    # One at a time (as authorisations arrive), then in batches of 250; each recorded once scored.
    singles, rest = week.iloc[:150], week.iloc[150:]
    for i in range(len(singles)):
        one = singles.iloc[[i]]
        parts.append(online.compute(one).frame())
        store.record(one)
    for start in range(0, len(rest), 250):
        batch = rest.iloc[start : start + 250]
        parts.append(online.compute(batch).frame())
        store.record(batch)
    scored = pd.concat(parts, ignore_index=True)

    # Batch: the same history, the scored week's labels unknown (as the store held them).
    same_history = transactions.copy()
    same_history.loc[same_history["timestamp"] >= WEEK, "label"] = 0
    batch = compute_features(same_history, start=WEEK, end=transactions["timestamp"].max())
    batch = batch.set_index("transaction_id").loc[scored["transaction_id"]].reset_index()
    assert len(scored) == len(week) > 1000
    # Counts exactly; averages and risks to the last bits of a float (sums start at another row).
    counts = [c for c in FEATURE_COLUMNS if "_NB_TX_" in c or c.startswith("TX_DURING")]
    np.testing.assert_array_equal(scored[counts].to_numpy(), batch[counts].to_numpy())
    np.testing.assert_allclose(model_matrix(scored), model_matrix(batch), rtol=1e-12, atol=0)
    assert scored[list(FEATURE_COLUMNS)].notna().all().all()


def test_a_transaction_seen_before_is_refused_and_nothing_is_recorded(
    store: TransactionStore, transactions: pd.DataFrame
) -> None:
    week = transactions[transactions["timestamp"] >= WEEK].drop(columns=["label"])
    store.record(week.iloc[:3])
    before = store.summary()["transactions"]
    with pytest.raises(FedfraudInputError, match="1 transaction id\\(s\\) were seen before"):
        store.record(week.iloc[2:6])
    assert store.summary()["transactions"] == before
    with pytest.raises(ValueError, match="appears twice"):
        OnlineFeatures(store).compute(pd.concat([week.iloc[[7]], week.iloc[[7]]]))


def test_consortium_terminal_features_online_equal_the_training_path(tmp_path: Path, transactions: pd.DataFrame) -> None:
    """A bank whose model uses consortium terminal features scores with the pooled history, as
    its training rows were built (``with_consortium_terminal_features``)."""
    import crypto
    from bank_node.federated.lockstep import run_lockstep
    from bank_node.federated.terminal_stats import (
        TerminalStatsConfig,
        consortium_history,
        events_by_day,
        history_days,
        with_consortium_terminal_features,
    )
    from bank_node.online import ConsortiumTerminals
    from consortium.secure_sum import SecureSum
    from fedfraud.simulation import partition_customers

    owner = partition_customers(transactions["customer_id"], (0.5, 0.3, 0.2), seed=1)
    banks = {f"bank-{i + 1}": transactions[owner == i] for i in range(3)}
    key = bytes(range(32))
    last = transactions["timestamp"].max()
    days = history_days(WEEK, last)
    secret = crypto.generate("plain")
    pooled = run_lockstep(
        {b: consortium_history(events_by_day(frame, key, days), secret=key, config=TerminalStatsConfig(threshold=2))
         for b, frame in banks.items()},
        contexts=dict.fromkeys(banks, secret),
        aggregator=SecureSum(context=crypto.load_context(secret.public_context(), require_public=True)),
    ).results["bank-1"]

    own = banks["bank-1"]
    store = TransactionStore(f"sqlite:///{tmp_path / 'node.db'}")
    store.ingest(own[own["timestamp"] < WEEK], name="history", sha256="1" * 64, retention_days=None)
    week = own[own["timestamp"] >= WEEK].drop(columns=["label"])
    online = OnlineFeatures(store)
    parts = []
    for start in range(0, len(week), 300):
        batch = week.iloc[start : start + 300]
        parts.append(online.compute(batch, consortium=ConsortiumTerminals(history=pooled, key=key)).frame())
        store.record(batch)
    scored = pd.concat(parts, ignore_index=True)
    store.close()

    same_history = own.copy()
    same_history.loc[same_history["timestamp"] >= WEEK, "label"] = 0
    batch_rows, covered = with_consortium_terminal_features(
        compute_features(same_history, start=WEEK, end=last), pooled, secret=key)
    assert 0.3 < covered.mean() < 1.0
    batch_rows = batch_rows.set_index("transaction_id").loc[scored["transaction_id"]].reset_index()
    np.testing.assert_allclose(model_matrix(scored), model_matrix(batch_rows), rtol=1e-12, atol=0)


def test_workers_sharing_a_store_see_each_others_writes_and_labels_that_arrive(
    tmp_path: Path, transactions: pd.DataFrame
) -> None:
    """Two scoring workers (each its own connection and in-memory copy) score in turns; half-way,
    labels of the last days before the week arrive through a third process. Every feature equals
    the batch features over the store as it was when the transaction was scored."""
    late = transactions["timestamp"] >= WEEK - pd.Timedelta(days=12)
    history = transactions[transactions["timestamp"] < WEEK]
    url = f"sqlite:///{tmp_path / 'node.db'}"
    ingest = TransactionStore(url)
    ingest.ingest(history.assign(label=history["label"].where(~late[history.index], np.nan)), name="history",
                  sha256="3" * 64, retention_days=None)
    workers = [OnlineFeatures(TransactionStore(url)), OnlineFeatures(TransactionStore(url))]
    week = transactions[transactions["timestamp"] >= WEEK].drop(columns=["label"])
    halves = np.array_split(np.arange(len(week)), 2)
    scored = []
    for half, rows in enumerate(halves):
        if half == 1:
            late_rows = history[late[history.index]]
            ingest.record_labels(late_rows[["transaction_id", "label"]], name="late labels", sha256="4" * 64)
        parts = []
        for i, start in enumerate(range(0, len(rows), 40)):
            worker = workers[i % 2]
            batch = week.iloc[rows[start : start + 40]]
            parts.append(worker.compute(batch).frame())
            worker.record(batch)
        scored.append(pd.concat(parts, ignore_index=True))

    def batch_features(labels_known: bool) -> pd.DataFrame:
        same = transactions.copy()
        same.loc[same["timestamp"] >= WEEK, "label"] = 0
        if not labels_known:
            same.loc[late & (same["timestamp"] < WEEK), "label"] = 0
        return compute_features(same, start=WEEK, end=transactions["timestamp"].max()).set_index("transaction_id")

    for half, labels_known in ((0, False), (1, True)):
        expected = batch_features(labels_known).loc[scored[half]["transaction_id"]].reset_index()
        np.testing.assert_allclose(model_matrix(scored[half]), model_matrix(expected), rtol=1e-12, atol=0)
    # The labels mattered: without them the second half's terminal risks would differ.
    unaware = batch_features(False).loc[scored[1]["transaction_id"]]
    assert (unaware["TERMINAL_ID_RISK_30DAY_WINDOW"].to_numpy() != scored[1]["TERMINAL_ID_RISK_30DAY_WINDOW"]).any()


def test_a_transaction_older_than_what_memory_holds_is_featured_from_the_store(
    tmp_path: Path, transactions: pd.DataFrame
) -> None:
    history = transactions[transactions["timestamp"] < WEEK]
    old = history[history["timestamp"] < WEEK - pd.Timedelta(days=10)].iloc[[-1]]
    store = TransactionStore(f"sqlite:///{tmp_path / 'node.db'}")
    store.ingest(history.drop(old.index), name="history", sha256="5" * 64, retention_days=None)
    online = OnlineFeatures(store)
    scored = online.compute(old.drop(columns=["label"])).frame()
    first = int(old["timestamp"].iloc[0].value)
    assert not online.recent.covers(first, online.config.lookback_days * 86_400 * 10**9)  # not from memory

    same = history.copy()
    same.loc[old.index, "label"] = 0
    expected = compute_features(same, start=WEEK - pd.Timedelta(days=11), end=WEEK).set_index("transaction_id")
    expected = expected.loc[old["transaction_id"]].reset_index()
    np.testing.assert_allclose(model_matrix(scored), model_matrix(expected), rtol=1e-12, atol=0)


def _awkward_requests(held: pd.DataFrame) -> list[pd.DataFrame]:
    """Requests a scoring service can receive that the batch windows handle in their own way."""
    busy_card = held["customer_id"].value_counts().index[0]
    rows = held[held["customer_id"] == busy_card].sort_values(["timestamp", "transaction_id"])
    tie, newest = rows.iloc[-5], rows.iloc[-1]
    busy_terminal = held["terminal_id"].value_counts().index[0]
    at_terminal = held[held["terminal_id"] == busy_terminal].iloc[-1]
    one = [
        {**tie.to_dict(), "transaction_id": -1, "amount": 12.5},  # same instant, sorts before the held row
        {**tie.to_dict(), "transaction_id": 10**12, "amount": 99.0},  # same instant, after it
        {**newest.to_dict(), "timestamp": newest["timestamp"] - pd.Timedelta(days=2), "transaction_id": 10**12 + 1},
        {**tie.to_dict(), "customer_id": 10**9, "transaction_id": 10**12 + 2},  # a card never seen
        {**tie.to_dict(), "terminal_id": 10**9, "transaction_id": 10**12 + 3},  # a terminal never seen
    ]
    requests = [pd.DataFrame([case]) for case in one]
    # Several of one card in one request, two at the same instant, given out of time order.
    same_card = [{**newest.to_dict(), "timestamp": newest["timestamp"] + pd.Timedelta(hours=h), "transaction_id": 10**13 + k,
                  "amount": 10.0 + k} for k, h in enumerate((5, 1, 3, 3, 0.5))]
    requests.append(pd.DataFrame(same_card))
    # One terminal over more than the label delay: the earlier ones enter the later ones' terminal
    # windows (as not known to be fraud), and a second card at the same terminal too.
    spread = [{**at_terminal.to_dict(), "timestamp": at_terminal["timestamp"] + pd.Timedelta(days=d),
               "transaction_id": 10**14 + k, "customer_id": int(at_terminal["customer_id"]) + (k % 2)}
              for k, d in enumerate((0.1, 1, 7.1, 7.5, 8, 9))]
    requests.append(pd.DataFrame(spread))
    requests.append(pd.concat([pd.DataFrame(same_card), pd.DataFrame(spread), *requests[:3]], ignore_index=True))
    # A burst of one card at the busiest terminal (card testing): 150 in two hours, out of order.
    burst = [{**at_terminal.to_dict(), "customer_id": busy_card, "transaction_id": 10**15 + k, "amount": 1.0 + k % 7,
              "timestamp": at_terminal["timestamp"] + pd.Timedelta(seconds=(k * 7919) % 7200)} for k in range(150)]
    requests.append(pd.DataFrame(burst))
    return [r.drop(columns=["label"]) for r in requests]


@pytest.mark.parametrize("delay_days", [7, 0])
def test_features_read_off_memory_equal_the_batch_path_on_awkward_requests(
        store: TransactionStore, transactions: pd.DataFrame, delay_days: int) -> None:
    """What the scoring service reads off its held rows equals ``compute_features`` over the
    rows the windows reach (the store path), on ties in time (before or after a held row in id
    order), a late arrival, a new card, a new terminal, several transactions of one card in one
    request, and a request spanning more than the label delay (or, with no delay, a transaction
    whose own terminal window holds it)."""
    online = OnlineFeatures(store, FeatureConfig(delay_days=delay_days))
    online.recent = RecentTransactions(store, keep_days=60)  # every held row: the cases reach far back
    online.recent.load()
    held = transactions[transactions["timestamp"] < WEEK]

    def compare() -> None:
        for request in _awkward_requests(held):
            new = NewTransactions.from_frame(request)
            first = int(new.time_ns.min())
            assert online.recent.covers(first, online.config.lookback_days * 86_400 * 10**9)
            from_memory, from_batch = online._from_memory(new), online._from_store(new)
            assert list(from_memory) == list(from_batch) == list(feature_columns(online.config))
            for name in from_memory:
                if "_NB_TX_" in name or name.startswith("TX_DURING"):
                    np.testing.assert_array_equal(from_memory[name], from_batch[name], err_msg=name)
                else:
                    np.testing.assert_allclose(from_memory[name], from_batch[name], rtol=1e-12, atol=0,
                                               err_msg=name)

    compare()
    # Windows long enough to be summed by running sums, on both sides, were among them.
    burst = _awkward_requests(held)[-1]
    features = online._from_memory(NewTransactions.from_frame(burst))
    assert features["CUSTOMER_ID_NB_TX_1DAY_WINDOW"].max() > SUM_ROWS_MAX
    assert features["TERMINAL_ID_NB_TX_30DAY_WINDOW"].max() > SUM_ROWS_MAX
    # Labels that arrive change held rows in place (running sums made again), and rows recorded
    # since are appended to them: the windows still equal the batch path's.
    busy_terminal = held["terminal_id"].value_counts().index[0]
    relabel = held[held["terminal_id"] == busy_terminal].iloc[:-3:2]
    store.record_labels(relabel[["transaction_id"]].assign(label=1), name="late labels", sha256="6" * 64)
    later = held[held["terminal_id"] == busy_terminal].iloc[[-1]]
    newer = later.assign(transaction_id=10**16, timestamp=later["timestamp"] + pd.Timedelta(minutes=1))
    online.record(newer.drop(columns=["label"]))
    online.recent.sync()
    held = pd.concat([held, newer.assign(label=0)], ignore_index=True)
    compare()
    # The requests did reach the cases: in-request card and terminal windows.
    spread = NewTransactions.from_frame(_awkward_requests(held)[6])
    counts = online._from_memory(spread)["TERMINAL_ID_NB_TX_1DAY_WINDOW"]
    alone = [online._from_memory(NewTransactions.from_frame(_awkward_requests(held)[6].iloc[[k]]))[
        "TERMINAL_ID_NB_TX_1DAY_WINDOW"][0] for k in range(len(spread))]
    assert (counts > np.array(alone)).any()


def test_terminal_tags_kept_by_a_worker_are_the_keyed_tags_even_when_threads_evict_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The scoring worker keeps terminals' keyed tags; with a small limit, threads scoring at once
    keep clearing them under each other, and every answer is still the keyed tag."""
    import threading

    from bank_node.federated.terminal_stats import ConsortiumHistory, terminal_tags
    from bank_node.online import ConsortiumTerminals

    monkeypatch.setattr(ConsortiumTerminals, "MAX_KEPT_TAGS", 50)
    key = bytes(range(32))
    empty = np.empty(0, dtype=np.int64)
    kept = ConsortiumTerminals(history=ConsortiumHistory(tag=empty, time_ns=empty, count=empty, frauds=empty,
                                                         presence_tags=empty, presence_banks=empty, days=(),
                                                         threshold=1), key=key)
    rng = np.random.default_rng(3)
    asks = [rng.integers(0, 400, 40) for _ in range(300)]
    wrong: list[object] = []

    def score(part: list[np.ndarray]) -> None:
        for ids in part:
            try:
                if not np.array_equal(kept.tags(ids), terminal_tags(ids, key)):
                    wrong.append(ids)
            except Exception as exc:  # noqa: BLE001 - any failure is what the test looks for
                wrong.append(exc)

    threads = [threading.Thread(target=score, args=(asks[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []
    assert len(kept._tags) <= 50 + 40
