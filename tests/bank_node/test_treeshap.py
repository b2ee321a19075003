"""The exact contributions read from tables are XGBoost's own (``pred_contribs=True``) to float32
rounding: on random rows and on rows placed at, just below and float32-equal to the thresholds;
for shallow and deep trees (features tested again down a path), stumps and federated models; and
a model the tables cannot represent is declined with its reason, never approximated. The
probabilities the same look-ups give are XGBoost's bit for bit, or not given at all."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

import bank_node.treeshap as treeshap
from bank_node.features import MODEL_INPUTS
from bank_node.treeshap import ContributionTables, TablesDeclined


def _data(seed: int = 0, n: int = 4000, features: int = 15) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.gamma(2.0, 3.0, size=(n, features))
    X[:, 3] = rng.integers(0, 2, size=n)  # a 0/1 input, as the handbook's weekend and night flags
    logit = 0.4 * X[:, 0] - 0.3 * X[:, 1] * X[:, 2] / 9 + 1.5 * X[:, 3] + np.sin(X[:, 4]) - 2
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return X, y


def _booster(depth: int, trees: int = 30, **params: object) -> tuple[xgb.Booster, np.ndarray]:
    X, y = _data()
    booster = xgb.train({"max_depth": depth, "eta": 0.3, "objective": "binary:logistic", "nthread": 1,
                         "tree_method": "hist", **params}, xgb.DMatrix(X, label=y), trees)
    booster.set_param({"nthread": 1})
    return booster, X


def _expected(booster: xgb.Booster, X: np.ndarray) -> np.ndarray:
    return np.asarray(booster.predict(xgb.DMatrix(X, nthread=1), pred_contribs=True), dtype=np.float64)


def _at_thresholds(booster: xgb.Booster, X: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rows of X with some values moved onto a threshold of the model, just below one in float32,
    or below one in float64 while equal to it in float32 (XGBoost compares float32: it goes right)."""
    frame = booster.trees_to_dataframe()
    splits = frame[frame["Feature"] != "Leaf"]
    rows = X[rng.integers(0, len(X), size=600)].copy()
    for row in rows:
        for _, split in splits.sample(6, random_state=int(rng.integers(1 << 30))).iterrows():
            f, threshold = int(str(split["Feature"]).lstrip("f")), np.float32(split["Split"])
            kind = rng.integers(0, 3)
            if kind == 0:
                row[f] = float(threshold)
            elif kind == 1:
                row[f] = float(np.nextafter(threshold, np.float32(-np.inf)))
            else:
                row[f] = float(threshold) - abs(float(threshold)) * 1e-12 - 1e-300
    return rows


@pytest.mark.parametrize("depth", [1, 2, 3, 6])
def test_the_tables_give_xgboosts_exact_contributions(depth: int) -> None:
    booster, X = _booster(depth)
    tables = ContributionTables.of_booster(booster)
    rng = np.random.default_rng(depth)
    for rows in (X[:500], _at_thresholds(booster, X, rng)):
        expected = _expected(booster, rows)
        got = tables.contributions(rows)
        assert got.shape == expected.shape == (len(rows), 16)
        scale = np.abs(expected).max()
        np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6 * scale)
        # they add up to the margin, as XGBoost's do
        margin = booster.predict(xgb.DMatrix(rows, nthread=1), output_margin=True)
        np.testing.assert_allclose(got.sum(axis=1), margin, rtol=0, atol=5e-6 * scale)
    if depth == 6:  # deep enough that paths test a feature again: the case the intervals exist for
        frame = booster.trees_to_dataframe()
        assert any(len(path) != len(set(path)) for path in _paths(frame))


def _paths(frame: object) -> list[list[str]]:
    """The features tested on every root-to-leaf path of every tree."""
    import pandas as pd

    assert isinstance(frame, pd.DataFrame)
    paths = []
    for _, tree in frame.groupby("Tree"):
        nodes = tree.set_index("ID")
        stack = [(f"{int(tree['Tree'].iloc[0])}-0", [])]
        while stack:
            node, path = stack.pop()
            split = nodes.loc[node]
            if split["Feature"] == "Leaf":
                paths.append(path)
            else:
                stack += [(split["Yes"], [*path, split["Feature"]]), (split["No"], [*path, split["Feature"]])]
    return paths


def test_a_batch_gives_what_its_rows_give_one_by_one() -> None:
    booster, X = _booster(4)
    tables = ContributionTables.of_booster(booster)
    rows = X[:250]  # more than one block of rows
    together = tables.contributions(rows)
    for i in (0, 99, 100, 249):
        np.testing.assert_array_equal(together[i], tables.contributions(rows[i : i + 1])[0])


def test_trees_without_a_split_put_everything_in_the_bias() -> None:
    booster, X = _booster(3, trees=5, min_child_weight=1e9)
    tables = ContributionTables.of_booster(booster)
    got, expected = tables.contributions(X[:20]), _expected(booster, X[:20])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert (got[:, :-1] == 0).all()


def test_a_model_the_tables_cannot_hold_is_declined_with_its_reason() -> None:
    booster, _ = _booster(6)
    with pytest.raises(TablesDeclined, match=r"MiB, over the budget of 0\.1 MiB"):
        ContributionTables.of_booster(booster, budget_bytes=100_000)
    X, y = _data()
    multi = xgb.train({"max_depth": 2, "objective": "multi:softprob", "num_class": 3, "nthread": 1},
                      xgb.DMatrix(X, label=y + (X[:, 0] > 6)), 3)
    with pytest.raises(TablesDeclined, match="not a binary tree ensemble"):
        ContributionTables.of_booster(multi)


def test_rows_with_a_missing_value_are_refused_not_misread() -> None:
    booster, X = _booster(3)
    tables = ContributionTables.of_booster(booster)
    rows = X[:3].copy()
    rows[1, 4] = np.nan
    with pytest.raises(ValueError, match="missing or infinite"):
        tables.contributions(rows)
    with pytest.raises(ValueError, match="15 features"):
        tables.contributions(X[:3, :14])


def _predict(booster: xgb.Booster, rows: np.ndarray) -> np.ndarray:
    return np.asarray(booster.predict(xgb.DMatrix(rows, nthread=1)))


@pytest.mark.parametrize("depth", [1, 3, 6])
def test_the_tables_give_xgboosts_probabilities_bit_for_bit(depth: int) -> None:
    booster, X = _booster(depth, trees=60)
    tables = ContributionTables.of_booster(booster)
    assert tables.base_margin is not None
    for rows in (X, _at_thresholds(booster, X, np.random.default_rng(depth)), X[:1]):
        probability, _ = tables.scores(rows)
        assert probability is not None
        np.testing.assert_array_equal(probability, _predict(booster, rows))


@pytest.mark.slow
def test_handbook_rows_get_xgboosts_probabilities_and_contributions(handbook_dir: Path) -> None:
    """On the handbook's own engineered features (its reference file), a model of 100 trees of
    depth 6 as the scoring bench trains: every probability equal, every contribution within float32."""
    frame = pd.read_parquet(next(handbook_dir.glob("features_reference_*.parquet")))
    X = frame[list(MODEL_INPUTS)].to_numpy(dtype=np.float64)
    train, rows = X[: len(X) // 2], X[len(X) // 2 :][:: max(1, len(X) // 40_000)]
    booster = xgb.train({"max_depth": 6, "objective": "binary:logistic", "nthread": 2},
                        xgb.DMatrix(train, label=frame["TX_FRAUD"].to_numpy()[: len(train)]), 100)
    booster.set_param({"nthread": 1})
    tables = ContributionTables.of_booster(booster)
    probability, contributions = tables.scores(rows)
    assert probability is not None and len(rows) > 15_000
    np.testing.assert_array_equal(probability, _predict(booster, rows))
    expected = booster.predict(xgb.DMatrix(rows[:3000], nthread=1), pred_contribs=True)
    np.testing.assert_allclose(contributions[:3000], expected, rtol=0, atol=2e-6 * np.abs(expected).max())


def test_margins_far_out_and_other_objectives_leave_the_probability_to_xgboost(
        monkeypatch: pytest.MonkeyPatch) -> None:
    booster, X = _booster(3)
    tables = ContributionTables.of_booster(booster)
    margins = booster.predict(xgb.DMatrix(X[:50], nthread=1), output_margin=True)
    monkeypatch.setattr(treeshap, "_MARGIN_LIMIT", float(np.abs(margins).max()) / 2)
    probability, contributions = tables.scores(X[:50])
    assert probability is None  # some margin passed the limit: XGBoost's to transform
    np.testing.assert_array_equal(contributions, tables.contributions(X[:50]))
    monkeypatch.undo()

    raw, _ = _booster(3, objective="binary:logitraw")
    other = ContributionTables.of_booster(raw)
    assert other.base_margin is None and other.scores(X[:5])[0] is None
    np.testing.assert_allclose(other.contributions(X[:5]), _expected(raw, X[:5]), rtol=0, atol=1e-5)


def test_a_probability_not_bit_equal_on_the_probes_is_never_used(monkeypatch: pytest.MonkeyPatch) -> None:
    booster, X = _booster(3)
    exact = treeshap._sigmoid

    def off(margin: np.ndarray) -> np.ndarray:
        return np.nextafter(exact(margin), np.float32(1))  # one float32 step up

    monkeypatch.setattr(treeshap, "_sigmoid", off)
    tables = ContributionTables.of_booster(booster)
    assert tables.base_margin is None
    assert tables.scores(X[:5])[0] is None
