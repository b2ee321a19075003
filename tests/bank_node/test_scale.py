"""The bank node on Dask (a local cluster of two worker processes, partitioned Parquet): the
features and a tree's histograms equal the pandas path's."""

from __future__ import annotations

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
from bank_node.scale import dask_client, dask_features, dask_level_histograms, read_transactions
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
    expected = build_histograms(bin_index(X, cuts), grad, hess, np.zeros(len(labels), np.int32), request.nodes,
                                request.n_bins, features=request.features)

    frame = dask_features(read_transactions(str(parquet_folder)), start=START, end=END)
    got = dask_level_histograms(frame, cuts, request, params, margin)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-9)
    # What leaves the bank: the histograms in the secure sum's fixed point, the same integers.
    factor = histogram_scale(SUM_LIMIT, float(len(labels)), params.scale_pos_weight)
    sent = [np.rint(flatten_histograms(h, request.bins_per_feature) * factor) for h in (got, expected)]
    np.testing.assert_array_equal(*sent)
    assert expected[..., 1].sum() > 0


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
