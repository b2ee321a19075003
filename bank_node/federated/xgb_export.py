"""Write the ensemble as an XGBoost JSON model, and read such a model back.

``xgboost.Booster(model_file=path)`` loads the export; its margins and probabilities equal
:class:`~bank_node.federated.ensemble.GBDTModel`'s (float32 thresholds, float32 leaf values,
the same order of additions). Every split has ``default_left = 0``: the training data is
dense, and a missing value at scoring time goes right, in both implementations.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from .ensemble import GBDTModel
from .params import GBDTParams
from .tree import Tree

__all__ = [
    "from_xgboost_json",
    "load_xgboost_json",
    "save_xgboost_json",
    "to_xgboost_json",
]

# XGBoost marks the root's missing parent with INT32_MAX.
_NO_PARENT = 2147483647
_XGBOOST_VERSION = [3, 0, 0]


def _f32(values: npt.ArrayLike) -> list[float]:
    # A float32 widened to float64 prints as a decimal that parses back to the same float32.
    return [float(v) for v in np.asarray(values, dtype=np.float32)]


def _tree_json(tree: Tree, tree_id: int, n_features: int) -> dict[str, Any]:
    leaf = tree.is_leaf
    # XGBoost keeps a leaf's value in split_conditions; split nodes keep their threshold.
    conditions = np.where(leaf, tree.value, tree.threshold)
    parents = np.where(tree.parent < 0, _NO_PARENT, tree.parent)
    n = tree.n_nodes
    return {
        "base_weights": _f32(tree.base_weight),
        "categories": [],
        "categories_nodes": [],
        "categories_segments": [],
        "categories_sizes": [],
        "default_left": [0] * n,
        "id": tree_id,
        "left_children": [int(v) for v in tree.left],
        "loss_changes": _f32(tree.loss_change),
        "parents": [int(v) for v in parents],
        "right_children": [int(v) for v in tree.right],
        "split_conditions": _f32(conditions),
        "split_indices": [int(v) for v in tree.feature],
        "split_type": [0] * n,
        "sum_hessian": _f32(tree.sum_hess),
        "tree_param": {
            "num_deleted": "0",
            "num_feature": str(n_features),
            "num_nodes": str(n),
            "size_leaf_vector": "1",
        },
    }


def to_xgboost_json(
    model: GBDTModel,
    *,
    params: GBDTParams | None = None,
    feature_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The model as XGBoost's JSON document (a ``dict`` ready for ``json.dumps``).

    Parameters
    ----------
    model : GBDTModel
    params : GBDTParams, optional
        Recorded for ``scale_pos_weight`` (informational; it does not change predictions).
    feature_names : sequence of str, optional
        Column names, one per feature.

    Returns
    -------
    dict
    """
    if feature_names is not None and len(feature_names) != model.n_features:
        raise ValueError(f"feature_names has {len(feature_names)} names for {model.n_features} features")
    n_trees = len(model.trees)
    spw = 1.0 if params is None else params.scale_pos_weight
    learner: dict[str, Any] = {
        "attributes": {},
        "feature_names": list(feature_names) if feature_names is not None else [],
        "feature_types": ["float"] * model.n_features if feature_names is not None else [],
        "gradient_booster": {
            "name": "gbtree",
            "model": {
                "gbtree_model_param": {"num_parallel_tree": "1", "num_trees": str(n_trees)},
                "iteration_indptr": list(range(n_trees + 1)),
                "tree_info": [0] * n_trees,
                "trees": [_tree_json(t, i, model.n_features) for i, t in enumerate(model.trees)],
            },
        },
        "learner_model_param": {
            "base_score": f"[{float(np.float32(model.base_score)):.9E}]",
            "boost_from_average": "0",
            "num_class": "0",
            "num_feature": str(model.n_features),
            "num_target": "1",
        },
        "objective": {
            "name": "binary:logistic",
            "reg_loss_param": {"scale_pos_weight": repr(float(spw))},
        },
    }
    return {"learner": learner, "version": list(_XGBOOST_VERSION)}


def save_xgboost_json(
    model: GBDTModel,
    path: str | os.PathLike[str],
    *,
    params: GBDTParams | None = None,
    feature_names: Sequence[str] | None = None,
) -> None:
    """Write :func:`to_xgboost_json` to ``path`` (use a ``.json`` suffix for XGBoost)."""
    document = to_xgboost_json(model, params=params, feature_names=feature_names)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(document, handle, separators=(",", ":"))


def _parse_base_score(text: str) -> float:
    return float(text.strip().strip("[]").split(",")[0])


def _tree_from_json(doc: dict[str, Any], cuts: Sequence[npt.NDArray[np.float32]] | None) -> Tree:
    left = np.asarray(doc["left_children"], dtype=np.int32)
    right = np.asarray(doc["right_children"], dtype=np.int32)
    parent = np.asarray(doc["parents"], dtype=np.int64)
    feature = np.asarray(doc["split_indices"], dtype=np.int32)
    conditions = np.asarray(doc["split_conditions"], dtype=np.float32)
    leaf = left < 0
    threshold = np.where(leaf, np.float32(0.0), conditions).astype(np.float32)
    split_bin = np.full(left.size, -1, dtype=np.int32)
    for node in np.flatnonzero(~leaf).tolist():
        if cuts is None:
            split_bin[node] = int(np.ceil(conditions[node])) - 1
        else:
            # the cut equal to the threshold; values below it are exactly the bins up to it
            split_bin[node] = int(np.searchsorted(cuts[feature[node]], conditions[node], side="left"))
    return Tree(
        left=left,
        right=right,
        parent=np.where(parent == _NO_PARENT, -1, parent).astype(np.int32),
        feature=np.where(leaf, 0, feature).astype(np.int32),
        split_bin=split_bin,
        threshold=threshold,
        value=np.where(leaf, conditions, np.float32(0.0)).astype(np.float32),
        base_weight=np.asarray(doc["base_weights"], dtype=np.float32),
        loss_change=np.asarray(doc["loss_changes"], dtype=np.float32),
        sum_hess=np.asarray(doc["sum_hessian"], dtype=np.float64),
    )


def from_xgboost_json(
    document: dict[str, Any], *, cuts: Sequence[npt.NDArray[np.float32]] | None = None
) -> GBDTModel:
    """Rebuild a model from an XGBoost JSON document of a ``binary:logistic`` gbtree.

    Parameters
    ----------
    document : dict
        Parsed JSON (our export or XGBoost's own, numerical splits only).
    cuts : sequence of numpy.ndarray, optional
        The global cuts, to recover each split's bin; without them a threshold ``t`` is
        read as the bin-index split ``ceil(t) - 1``.

    Returns
    -------
    GBDTModel
    """
    learner = document["learner"]
    objective = learner["objective"]["name"]
    if objective != "binary:logistic":
        raise ValueError(f"only binary:logistic models are supported, got {objective!r}")
    booster = learner["gradient_booster"]
    if booster.get("name") != "gbtree":
        raise ValueError(f"only gbtree models are supported, got {booster.get('name')!r}")
    trees = tuple(_tree_from_json(t, cuts) for t in booster["model"]["trees"])
    param = learner["learner_model_param"]
    return GBDTModel(
        trees=trees,
        base_score=_parse_base_score(param["base_score"]),
        n_features=int(param["num_feature"]),
        cuts=None if cuts is None else tuple(np.asarray(c, dtype=np.float32) for c in cuts),
    )


def load_xgboost_json(
    path: str | os.PathLike[str], *, cuts: Sequence[npt.NDArray[np.float32]] | None = None
) -> GBDTModel:
    """Read a model written by :func:`save_xgboost_json` (or by XGBoost)."""
    with open(path, encoding="utf-8") as handle:
        return from_xgboost_json(json.load(handle), cuts=cuts)
