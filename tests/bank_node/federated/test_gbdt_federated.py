"""The federated GBDT protocol, through secure sums under each HE scheme, grows XGBoost's trees."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xgboost as xgb

import crypto
from bank_node.federated.binning import bin_index
from bank_node.federated.ensemble import GBDTModel
from bank_node.federated.gbdt import federated_gbdt
from bank_node.federated.inmemory import run_banks
from bank_node.federated.params import GBDTParams
from bank_node.federated.xgb_export import save_xgboost_json
from consortium.secure_sum import SecureSum

PARAMS = GBDTParams(n_trees=12, max_depth=4, eta=0.3, n_bins=64)


def run_protocol(data, scheme: str, params: GBDTParams = PARAMS) -> tuple[GBDTModel, dict]:  # type: ignore[no-untyped-def]
    secret = crypto.generate(scheme, **({"key_bits": 1024} if scheme == "paillier" else {}))
    aggregator = SecureSum(context=crypto.load_context(secret.public_context(), require_public=True))
    factories = {
        f"bank-{i}": (
            lambda rows=rows, i=i: federated_gbdt(
                data.X[rows], data.y[rows], params=params, scales=data.scales, party_index=i,
            )
        )
        for i, rows in enumerate(data.parties)
    }
    models, runners = run_banks(factories, contexts={bank: secret for bank in factories}, aggregator=aggregator)
    return models["bank-0"], {"models": models, "runners": runners}


def tree_signature(model: GBDTModel) -> list[list[tuple[int, float]]]:
    """Split feature and float32 threshold of every inner node, per tree."""
    return [
        [(int(t.feature[n]), float(t.threshold[n])) for n in range(t.n_nodes) if t.left[n] >= 0] for t in model.trees
    ]


def leaf_values(model: GBDTModel) -> np.ndarray:
    return np.concatenate([t.value[t.left < 0] for t in model.trees])


@pytest.fixture(scope="module")
def plain_model(gbdt_data):  # type: ignore[no-untyped-def]
    return run_protocol(gbdt_data, "plain")


def test_every_bank_derives_the_same_model(plain_model) -> None:  # type: ignore[no-untyped-def]
    models = list(plain_model[1]["models"].values())
    reference = tree_signature(models[0])
    assert all(tree_signature(m) == reference for m in models[1:])


def test_plaintext_protocol_grows_xgboost_hist_trees_on_global_bins(  # type: ignore[no-untyped-def]
    gbdt_data, plain_model, xgboost_on_bins
) -> None:
    model, _ = plain_model
    # XGBoost on the pooled rows mapped to the protocol's global bins: same split candidates.
    bins = bin_index(gbdt_data.X, model.cuts).astype(np.float32)
    booster = xgboost_on_bins(bins, gbdt_data.y, PARAMS)
    trees = json.loads(booster.save_raw("json"))["learner"]["gradient_booster"]["model"]["trees"]
    for t, (ours, theirs) in enumerate(zip(model.trees, trees, strict=True)):
        inner = [n for n in range(ours.n_nodes) if ours.left[n] >= 0]
        assert [int(ours.feature[n]) for n in inner] == [theirs["split_indices"][n] for n in inner], f"tree {t}"
        assert [int(ours.split_bin[n]) + 1 for n in inner] == [int(theirs["split_conditions"][n]) for n in inner]
        leaves = [n for n in range(ours.n_nodes) if ours.left[n] < 0]
        # Secure sums are exact over fixed-point cells (2^-19 here, each bank rounding its own),
        # XGBoost's over float rows: leaf weights agree to the fixed-point resolution.
        np.testing.assert_allclose(ours.value[leaves], [theirs["split_conditions"][n] for n in leaves], atol=2e-5)
    ours_margin = model.predict_margin(gbdt_data.X)
    np.testing.assert_allclose(ours_margin, booster.predict(xgb.DMatrix(bins), output_margin=True), atol=1e-4)


@pytest.mark.parametrize("scheme", ["ckks", "paillier"])
def test_encrypted_schemes_grow_the_same_trees(gbdt_data, plain_model, scheme: str) -> None:  # type: ignore[no-untyped-def]
    model, _ = run_protocol(gbdt_data, scheme)
    reference, _ = plain_model
    # Masked fixed-point sums are exact: every scheme grows bit-identical trees.
    assert tree_signature(model) == tree_signature(reference)
    np.testing.assert_array_equal(leaf_values(model), leaf_values(reference))


def test_exported_model_scores_alike_in_xgboost(gbdt_data, plain_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model, _ = plain_model
    path = tmp_path / "model.json"
    save_xgboost_json(model, path)
    booster = xgb.Booster(model_file=str(path))
    np.testing.assert_allclose(
        booster.predict(xgb.DMatrix(gbdt_data.X)), model.predict_proba(gbdt_data.X), atol=1e-6
    )


def test_every_bank_takes_part_in_every_round(gbdt_data, plain_model) -> None:  # type: ignore[no-untyped-def]
    runners = plain_model[1]["runners"]
    rounds = {runner.ledger.rounds for runner in runners.values()}
    assert len(rounds) == 1  # every bank took part in every round
    assert rounds.pop() >= 1 + PARAMS.n_trees  # the bins round, then at least one level per tree
