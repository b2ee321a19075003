"""The bank node on Dask (a local cluster of two worker processes, partitioned Parquet): the
features and a tree's histograms equal the pandas path's."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bank_node.features import compute_features, model_matrix
from bank_node.federated.binning import bin_index
from bank_node.federated.gbdt import histogram_scale
from bank_node.federated.grower import TreeGrower
from bank_node.federated.histogram import build_histograms, flatten_histograms
from bank_node.federated.objective import base_margin
from bank_node.federated.params import GBDTParams
from bank_node.federated.party import tree_gradients
from bank_node.federated.rounds import SUM_LIMIT
from bank_node.generator import generate_transactions
from bank_node.scale import dask_client, dask_features, read_transactions
from schemas.transaction import to_canonical

pytestmark = pytest.mark.slow
START, END = "2018-05-10", "2018-05-24"


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
    with dask_client(n_workers=2) as connected:
        yield connected


@pytest.fixture(scope="module")
def parquet_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Transactions in 7 Parquet files of shuffled rows: no file holds whole cards or terminals."""
    tx = to_canonical(generate_transactions(n_customers=400, n_terminals=300, days=55, seed=3,
                                            start_date="2018-04-01"), require_label=True)
    tx = tx[["transaction_id", "timestamp", "customer_id", "terminal_id", "amount", "label"]]
    shuffled = tx.sample(frac=1.0, random_state=1).reset_index(drop=True)
    folder = tmp_path_factory.mktemp("parquet")
    for i, part in enumerate(np.array_split(np.arange(len(shuffled)), 7)):
        shuffled.iloc[part].to_parquet(folder / f"part-{i}.parquet", index=False)
    return folder


def test_dask_features_equal_the_pandas_path(client: object, parquet_folder: Path) -> None:
    pooled = pd.read_parquet(parquet_folder)
    expected = compute_features(pooled, start=START, end=END)
    got = (dask_features(read_transactions(str(parquet_folder)), start=START, end=END).compute()
           .sort_values(["timestamp", "transaction_id"]).reset_index(drop=True))
    assert len(expected) > 5_000
    pd.testing.assert_frame_equal(got[expected.columns], expected, check_exact=True)


def test_dask_histograms_are_the_payload_the_pandas_path_sends(client: object, parquet_folder: Path) -> None:
    from functools import partial

    from bank_node.federated.gbdt import GBDTPart
    from bank_node.scale import DaskTrainingSet

    pooled = pd.read_parquet(parquet_folder)
    featured = compute_features(pooled, start=START, end=END)
    X = model_matrix(featured)
    cuts = [np.unique(np.quantile(X[:, j], np.linspace(0.05, 0.95, 15))).astype(np.float32)
            for j in range(X.shape[1])]
    params = GBDTParams(n_trees=1, max_depth=3)
    grower = TreeGrower(params=params, bins_per_feature=np.array([len(c) + 1 for c in cuts]),
                        features=np.arange(X.shape[1]), cuts=cuts)
    request = grower.request
    assert request is not None
    margin = float(base_margin(params.base_score))
    labels = featured["label"].to_numpy(dtype=np.float32)
    grad, hess = tree_gradients(np.full(len(labels), margin, dtype=np.float32), labels, params, tree_index=0)
    expected = flatten_histograms(build_histograms(bin_index(X, cuts), grad, hess, np.zeros(len(labels), np.int32),
                                                   request.nodes, request.n_bins, features=request.features),
                                  request.bins_per_feature)

    rows = DaskTrainingSet.of(client, dask_features(read_transactions(str(parquet_folder)), start=START, end=END))  # type: ignore[arg-type]
    assert len(rows.frames) > 1
    got = (rows.parts(GBDTPart.of).apply(partial(GBDTPart.binned, cuts=cuts, margin=margin))
           .apply(partial(GBDTPart.tree_started, params=params, tree_index=0, party_index=0, clip=None))
           .total(partial(GBDTPart.level_payload, request=request)))
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-9)
    # What leaves the bank: the histograms in the secure sum's fixed point, the same integers.
    factor = histogram_scale(SUM_LIMIT, float(len(labels)), params.scale_pos_weight)
    np.testing.assert_array_equal(np.rint(got * factor), np.rint(expected * factor))
    assert expected[1::2].sum() > 0


def test_fedfraud_features_on_dask_writes_what_the_pandas_path_writes(
    client: object, parquet_folder: Path, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from fedfraud.cli import main

    address = client.scheduler.address  # type: ignore[attr-defined]
    out = tmp_path / "featured"
    done = CliRunner().invoke(main, ["features", str(parquet_folder), str(out), "--start", START, "--end", END,
                                     "--dask-scheduler", address])
    assert done.exit_code == 0, done.output
    single = tmp_path / "single.parquet"
    pooled = tmp_path / "pooled.parquet"
    pd.read_parquet(parquet_folder).to_parquet(pooled, index=False)
    assert CliRunner().invoke(main, ["features", str(pooled), str(single), "--start", START, "--end", END]).exit_code == 0
    expected = pd.read_parquet(single)
    got = pd.read_parquet(out).sort_values(["timestamp", "transaction_id"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got[expected.columns], expected, check_exact=True)

    # A bad row in one file fails the whole computation with the pandas path's message.
    broken = tmp_path / "broken"
    broken.mkdir()
    for i, path in enumerate(sorted(parquet_folder.glob("*.parquet"))):
        frame = pd.read_parquet(path)
        if i == 3:
            frame.loc[frame.index[5], "label"] = 7
        frame.to_parquet(broken / path.name, index=False)
    failed = CliRunner().invoke(main, ["features", str(broken), str(tmp_path / "never"), "--dask-scheduler", address])
    assert failed.exit_code == 2 and "label" in failed.output and "Traceback" not in failed.output
    refused = CliRunner().invoke(main, ["features", str(parquet_folder), str(tmp_path / "x.parquet")])
    assert refused.exit_code == 2 and "read with --dask" in refused.output


def test_a_tree_grown_on_dask_is_the_pandas_paths_tree(client: object, parquet_folder: Path) -> None:
    from bank_node.federated.party import advance_positions, make_level_payload
    from bank_node.scale import dask_tree

    featured = compute_features(pd.read_parquet(parquet_folder), start=START, end=END)
    X = model_matrix(featured)
    cuts = [np.unique(np.quantile(X[:, j], np.linspace(0.02, 0.98, 40))).astype(np.float32) for j in range(X.shape[1])]
    params = GBDTParams(n_trees=1, max_depth=3, min_child_weight=0.5)
    bins = bin_index(X, cuts)
    labels = featured["label"].to_numpy(dtype=np.float32)
    grad, hess = tree_gradients(np.full(len(labels), float(base_margin(params.base_score)), dtype=np.float32), labels,
                                params, tree_index=0)
    grower = TreeGrower(params=params, bins_per_feature=np.array([len(c) + 1 for c in cuts]),
                        features=np.arange(X.shape[1]), cuts=cuts)
    positions = np.zeros(len(labels), dtype=np.int32)
    while (request := grower.request) is not None:
        result = grower.apply_level_sum(make_level_payload(bins, grad, hess, positions, request))
        positions = advance_positions(bins, positions, result.splits)
    expected = grower.tree()

    got = dask_tree(dask_features(read_transactions(str(parquet_folder)), start=START, end=END), cuts, params)
    np.testing.assert_array_equal(got.feature, expected.feature)
    np.testing.assert_array_equal(got.threshold, expected.threshold)
    np.testing.assert_allclose(got.value, expected.value, rtol=1e-9)
    assert (expected.feature >= 0).sum() >= 3  # a real tree: several splits


# ------------------------------------------------------------------------------ the agent's training on Dask

TRAIN_FROM, TRAIN_DAYS = "2018-05-12", 10


@pytest.fixture(scope="module")
def three_banks(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[pd.DataFrame], Path]:
    """Three banks' transactions (cards split between them, terminals shared); bank 0's also as a
    folder of 5 Parquet files of shuffled rows."""
    tx = to_canonical(generate_transactions(n_customers=600, n_terminals=150, days=40, seed=11,
                                            start_date="2018-04-20"), require_label=True)
    tx = tx[["transaction_id", "timestamp", "customer_id", "terminal_id", "amount", "label"]]
    banks = [tx[tx["customer_id"] % 3 == i].reset_index(drop=True) for i in range(3)]
    folder = tmp_path_factory.mktemp("bank-0")
    shuffled = banks[0].sample(frac=1.0, random_state=5).reset_index(drop=True)
    for i, part in enumerate(np.array_split(np.arange(len(shuffled)), 5)):
        shuffled.iloc[part].to_parquet(folder / f"part-{i}.parquet", index=False)
    return banks, folder


def _train_together(rows: dict[str, object], model: str, params: dict[str, object]) -> dict[str, bytes]:
    """Each bank's proposal file after one federated run of ``model`` over ``rows`` (in process, plain sums)."""
    import crypto
    from bank_node.agent.training import prepare_run
    from bank_node.federated.lockstep import run_lockstep
    from consortium.secure_sum import SecureSum

    secret = crypto.generate("plain")
    prepared = {bank: prepare_run(model, params, bank_rows, party_index=i, n_parties=len(rows))  # type: ignore[arg-type]
                for i, (bank, bank_rows) in enumerate(sorted(rows.items()))}
    done = run_lockstep({bank: p.algorithm() for bank, p in prepared.items()}, contexts=dict.fromkeys(rows, secret),
                        aggregator=SecureSum(context=crypto.load_context(secret.public_context(), require_public=True)))
    return {bank: prepared[bank].serialize(model_) for bank, model_ in done.results.items()}


@pytest.mark.parametrize(("model", "params"), [
    ("xgboost", {"n_trees": 4, "max_depth": 3, "eta": 0.3, "n_bins": 32, "colsample_bytree": 0.8,
                 "consortium_features": True}),
    ("logreg", {"max_rounds": 6, "consortium_features": True}),
    ("xgboost", {"n_trees": 3, "max_depth": 2, "n_bins": 16, "dp_epsilon": 8.0}),
    ("logreg", {"max_rounds": 4, "dp_epsilon": 8.0}),
])
def test_a_bank_training_on_dask_proposes_the_pandas_paths_model_to_the_byte(
    client: object, three_banks: tuple[list[pd.DataFrame], Path], model: str, params: dict[str, object],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bank 0 features and trains on Dask (its rows in 5 shuffled Parquet files, kept on two
    workers), the others on pandas: the model is the very file of a run where all three train on
    pandas, consortium terminal features included. (The banks would agree with each other whatever
    one of them contributed: every file is made from the same sums. The pandas run is the check.)
    Private runs draw each bank's noise from the same seeds in both runs."""
    from bank_node.agent import training
    from bank_node.federated.privacy import PrivateContribution

    seeds = iter(range(10**6))
    monkeypatch.setattr(training, "PrivateContribution", lambda setting, n_parties=1: PrivateContribution(
        setting, n_parties=n_parties, rng=np.random.default_rng(next(seeds) % 3)))  # bank i draws from seed i
    import crypto
    from bank_node.agent.training import DaskSource, training_rows
    from bank_node.federated.lockstep import run_lockstep
    from bank_node.federated.terminal_stats import consortium_history, events_by_day, history_days
    from consortium.secure_sum import SecureSum
    from bank_node.scale import DaskTrainingSet

    banks, folder = three_banks
    start = pd.Timestamp(TRAIN_FROM).date()
    on_pandas = {f"bank-{i}": training_rows(own, train_start=start, train_days=TRAIN_DAYS) for i, own in enumerate(banks)}
    on_dask = dict(on_pandas, **{"bank-0": DaskSource(folder, client, train_start=start, train_days=TRAIN_DAYS).rows()})
    assert isinstance(on_dask["bank-0"], DaskTrainingSet) and len(on_dask["bank-0"].frames) > 1
    assert (on_dask["bank-0"].n_rows, on_dask["bank-0"].n_frauds) == (on_pandas["bank-0"].n_rows,
                                                                      on_pandas["bank-0"].n_frauds)
    if params.get("consortium_features"):
        key = b"terminal-key-of-the-consortium-0"
        last = (pd.Timestamp(TRAIN_FROM) + pd.Timedelta(days=TRAIN_DAYS - 1)).date().isoformat()
        days = history_days(TRAIN_FROM, last)
        secret = crypto.generate("plain")
        history = run_lockstep(
            {f"bank-{i}": consortium_history(events_by_day(own, key, days), secret=key) for i, own in enumerate(banks)},
            contexts=dict.fromkeys(on_pandas, secret),
            aggregator=SecureSum(context=crypto.load_context(secret.public_context(), require_public=True)),
        ).results["bank-0"]
        on_pandas = {b: r.with_consortium_terminals(history, secret=key) for b, r in on_pandas.items()}
        on_dask = {b: r.with_consortium_terminals(history, secret=key) for b, r in on_dask.items()}  # type: ignore[attr-defined]

    mixed = _train_together(on_dask, model, params)
    assert len(set(mixed.values())) == 1, "every bank derives the same model"
    pooled = _train_together(on_pandas, model, params)  # type: ignore[arg-type]
    assert mixed == pooled


def test_score_histograms_on_dask_equal_the_pandas_paths(
    client: object, three_banks: tuple[list[pd.DataFrame], Path]
) -> None:
    from bank_node.agent.training import DaskSource, training_rows

    banks, folder = three_banks
    start = pd.Timestamp(TRAIN_FROM).date()
    local = training_rows(banks[0], train_start=start, train_days=TRAIN_DAYS)
    remote = DaskSource(folder, client, train_start=start, train_days=TRAIN_DAYS).rows()
    weights = np.linspace(-0.2, 0.3, local.X.shape[1])

    def score(X: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(np.log1p(np.abs(X)) @ weights - 2.0)))

    expected = local.score_histogram(score, 256)
    np.testing.assert_array_equal(remote.score_histogram(score, 256), expected)
    assert expected[256:].sum() == local.n_frauds > 0


def test_row_subsampling_is_refused_for_a_bank_on_dask_before_any_round(
    client: object, three_banks: tuple[list[pd.DataFrame], Path]
) -> None:
    from bank_node.agent.training import DaskSource, prepare_run
    from schemas.errors import FedfraudInputError

    rows = DaskSource(three_banks[1], client, train_start=pd.Timestamp(TRAIN_FROM).date(), train_days=TRAIN_DAYS).rows()
    with pytest.raises(FedfraudInputError, match="subsample"):
        prepare_run("xgboost", {"n_trees": 2, "subsample": 0.5}, rows, party_index=0)


def test_the_agent_says_what_training_on_dask_needs(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from fedfraud.cli import main

    runner = CliRunner()
    alone = runner.invoke(main, ["bank", "agent", "--state-dir", str(tmp_path), "--dask"])
    assert alone.exit_code == 2 and "--dask trains on --data" in alone.output and "Traceback" not in alone.output
    folder = tmp_path / "parquet"
    folder.mkdir()
    undeclared = runner.invoke(main, ["bank", "agent", "--state-dir", str(tmp_path), "--data", str(folder)])
    assert undeclared.exit_code == 2 and "is a folder" in undeclared.output and "with --dask" in undeclared.output


def test_a_transaction_id_repeated_across_files_is_refused_as_the_pandas_path_refuses_it(
    client: object, three_banks: tuple[list[pd.DataFrame], Path], tmp_path: Path
) -> None:
    """Each file is checked as it is read; an export of one day written twice into a second file
    would otherwise be joined with itself and trained on several times."""
    from bank_node.agent.training import DaskSource
    from schemas.errors import FedfraudInputError

    folder = tmp_path / "twice"
    shutil.copytree(three_banks[1], folder)
    again = pd.read_parquet(next(folder.glob("*.parquet")))
    again[again["timestamp"] >= pd.Timestamp(TRAIN_FROM)].head(40).to_parquet(folder / "again.parquet", index=False)
    source = DaskSource(folder, client, train_start=pd.Timestamp(TRAIN_FROM).date(), train_days=TRAIN_DAYS)
    with pytest.raises(FedfraudInputError, match="appear more than once across the files"):
        source.rows()
    with pytest.raises(FedfraudInputError, match="appear more than once"):
        source.transactions(pd.Timestamp(TRAIN_FROM).date(), pd.Timestamp("2018-05-30").date())


def test_unreadable_data_and_an_unreachable_cluster_are_named(client: object, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from bank_node.agent.training import DaskSource
    from fedfraud.cli import main
    from schemas.errors import FedfraudInputError

    def source(path: Path) -> DaskSource:
        return DaskSource(path, client, train_start=pd.Timestamp(TRAIN_FROM).date(), train_days=TRAIN_DAYS)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FedfraudInputError, match="holds no Parquet file"):
        source(empty).check()
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "a.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(FedfraudInputError, match="not readable as Parquet"):
        source(corrupt).rows()
    with pytest.raises(FedfraudInputError, match="no such file or folder"):
        source(tmp_path / "missing").check()
    refused = CliRunner().invoke(main, ["features", str(empty), str(tmp_path / "out"), "--dask-scheduler",
                                        "tcp://127.0.0.1:9"])
    assert refused.exit_code == 2 and "no Dask scheduler answers" in refused.output, refused.output


def test_a_cluster_that_loses_the_rows_fails_the_step_with_a_value_error(
    client: object, three_banks: tuple[list[pd.DataFrame], Path]
) -> None:
    """A worker lost or a scheduler restarted: the agent records the run as failed for that
    reason (a ValueError to it), or withdraws before the first round; it does not crash, and
    the next run features the rows again."""
    from bank_node.agent.training import DaskSource
    from bank_node.federated.gbdt import GBDTPart
    from bank_node.scale import ClusterError

    source = DaskSource(three_banks[1], client, train_start=pd.Timestamp(TRAIN_FROM).date(), train_days=TRAIN_DAYS)
    rows = source.rows()
    parts = rows.parts(GBDTPart.of)
    client.cancel(parts.futures)  # type: ignore[attr-defined]
    with pytest.raises(ClusterError, match="the Dask cluster failed while training"):
        parts.total(lambda part: np.ones(1))
    assert isinstance(ClusterError("x"), ValueError)
    client.cancel(list(rows.frames))  # type: ignore[attr-defined]
    assert not rows.held
    again = source.rows()
    assert again is not rows and again.held and again.n_rows == rows.n_rows
