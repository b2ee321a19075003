"""Scoring with the consortium's model on the bank's node: probability, decision and reasons.

The reasons are the model's own attribution of the score to its inputs, on the margin (log-odds)
scale, so that they add up, with the bias, to the score's margin:

- **XGBoost**: exact TreeSHAP contributions for requests of up to ``exact_reasons_max`` rows,
  and XGBoost's cheap approximation (``approx_contribs=True``, the Saabas path attribution) for
  larger batches. The exact ones come from tables built when the model loads
  (:mod:`bank_node.treeshap`: with the probability, about 4x faster than XGBoost for one
  transaction of 100 trees of depth 6, ``bench/scoring.py``; equal to
  ``Booster.predict(pred_contribs=True)`` to float32 rounding), and from
  XGBoost itself for a model the tables decline and for rows with a missing value. The same
  look-ups give the probability, bit for bit XGBoost's (checked at load; XGBoost's own
  ``inplace_predict`` where they do not);
- **logistic regression**: ``coef * (x - mean) / scale`` per input, exact by construction.

The model in use is the newest promoted model the node's agent verified and kept (its own
proposal, signed by its quorum of pinned members; ``bank_node/agent/runner.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import xgboost as xgb

from bank_node.agent.state import StateDir
from bank_node.agent.training import FeatureSettings
from bank_node.features import MODEL_INPUTS
from bank_node.federated.logreg import LogRegModel
from bank_node.treeshap import ContributionTables, TablesDeclined

__all__ = ["DEFAULT_EXACT_REASONS_MAX", "LoadedModel", "Reason", "Scores", "current_model_file", "describe",
           "load_model"]

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
DEFAULT_EXACT_REASONS_MAX: Final = 100


@dataclass(frozen=True)
class Reason:
    """One input's push on a score: its name, its value, and its contribution to the margin."""

    feature: str
    value: float
    contribution: float


@dataclass(frozen=True)
class Scores:
    """Scores of a batch of rows.

    Attributes
    ----------
    probability
        Fraud probability per row.
    contributions
        Per row and input, the contribution to the margin; the last column is the bias.
    exact
        Whether the contributions are exact (TreeSHAP, or a linear model) or approximated.
    """

    probability: FloatArray
    contributions: FloatArray
    exact: bool

    def reasons(self, X: FloatArray, row: int, *, top: int = 3) -> list[Reason]:
        """The ``top`` inputs that pushed row ``row``'s score most (by absolute contribution)."""
        return self.all_reasons(X[row : row + 1], top=top, rows=slice(row, row + 1))[0]

    def all_reasons(self, X: FloatArray, *, top: int = 3, rows: slice = slice(None)) -> list[list[Reason]]:
        """:meth:`reasons` of every row (of ``rows``), ranked for all rows at once."""
        return [[Reason(**reason) for reason in row] for row in self.reason_records(X, top=top, rows=rows)]

    def reason_records(self, X: FloatArray, *, top: int = 3, rows: slice = slice(None)) -> list[list[dict[str, Any]]]:
        """:meth:`all_reasons` as plain mappings (``feature``, ``value``, ``contribution``): what
        the scoring service answers, without an object per reason in between."""
        per_input = self.contributions[rows, :-1]
        if len(per_input) == 1:  # one transaction: in Python (numpy's calls on one row took 50 us)
            pushes, values = per_input[0].tolist(), np.asarray(X[0], dtype=np.float64).tolist()
            ranked = sorted(range(len(pushes)), key=lambda i: -abs(pushes[i]))[:top]  # stable, as below
            return [[{"feature": MODEL_INPUTS[i], "value": values[i], "contribution": pushes[i]} for i in ranked]]
        order = np.argsort(-np.abs(per_input), axis=1, kind="stable")[:, :top]
        # One flat pass over every reason, then cut per row (a comprehension per row cost 8 ms
        # for 1,000 rows).
        values = np.take_along_axis(X, order, axis=1).ravel().tolist()
        pushes = np.take_along_axis(per_input, order, axis=1).ravel().tolist()
        names = np.asarray(MODEL_INPUTS, dtype=object)[order].ravel().tolist()
        flat = [{"feature": name, "value": value, "contribution": push}
                for name, value, push in zip(names, values, pushes, strict=True)]
        width = order.shape[1]
        return [flat[row * width : (row + 1) * width] for row in range(len(order))]


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to score, with what describes it."""

    version: str
    family: str
    features: FeatureSettings
    booster: xgb.Booster | None = None
    logreg: LogRegModel | None = None
    exact_reasons_max: int = DEFAULT_EXACT_REASONS_MAX
    tables: ContributionTables | None = None

    def score(self, X: FloatArray) -> Scores:
        """Probabilities and contributions of rows of :data:`MODEL_INPUTS`."""
        X = np.asarray(X, dtype=np.float64)
        if self.booster is not None:
            exact = len(X) <= self.exact_reasons_max
            if exact and self.tables is not None and np.isfinite(X).all():
                looked_up, contributions = self.tables.scores(X)
                if looked_up is not None:
                    return Scores(probability=looked_up.astype(np.float64), contributions=contributions, exact=True)
                # inplace_predict: the same probabilities as predict on a DMatrix (tested), without
                # building one. The columns are MODEL_INPUTS (checked at load): no names to compare.
                return Scores(probability=np.asarray(self.booster.inplace_predict(X, validate_features=False),
                                                     dtype=np.float64),
                              contributions=contributions, exact=True)
            data = xgb.DMatrix(X, nthread=1)
            contributions = np.asarray(self.booster.predict(data, pred_contribs=True, approx_contribs=not exact,
                                                            validate_features=False), dtype=np.float64)
            probability = np.asarray(self.booster.predict(data, validate_features=False), dtype=np.float64)
            return Scores(probability=probability, contributions=contributions, exact=exact)
        assert self.logreg is not None
        model = self.logreg
        per_input = (X - np.asarray(model.mean)) / np.asarray(model.scale) * np.asarray(model.coef)
        contributions = np.hstack([per_input, np.full((len(X), 1), model.intercept)])
        return Scores(probability=model.predict_proba(X), contributions=contributions, exact=True)


def load_model(body: bytes, *, version: str, family: str,
               exact_reasons_max: int = DEFAULT_EXACT_REASONS_MAX) -> LoadedModel:
    """A model file (as the consortium publishes it) ready to score.

    Raises
    ------
    ValueError
        Not a model of ``family``, or one whose inputs are not :data:`MODEL_INPUTS`.
    """
    features = FeatureSettings.of_model_file(body)
    if family == "xgboost":
        booster = xgb.Booster()
        try:
            booster.load_model(bytearray(body))
        except xgb.core.XGBoostError as exc:
            raise ValueError(f"model {version} is not an XGBoost model: {str(exc).splitlines()[0]}") from None
        # One thread: the service runs a worker process per core, and XGBoost's OpenMP threads,
        # spinning between calls, took the cores from the other workers (200 requests/s became 50).
        booster.set_param({"nthread": 1})
        if tuple(booster.feature_names or ()) != MODEL_INPUTS:
            raise ValueError(f"model {version} takes inputs {booster.feature_names}, not {list(MODEL_INPUTS)}")
        tables = None
        if exact_reasons_max > 0:
            try:
                tables = ContributionTables.of_booster(booster)
                log.info("model %s: exact reasons from tables of %.1f MiB", version, tables.nbytes / 2**20)
            except TablesDeclined as exc:
                log.warning("model %s: exact reasons from XGBoost's own TreeSHAP, slower: %s", version, exc)
        return LoadedModel(version=version, family=family, features=features, booster=booster,
                           exact_reasons_max=exact_reasons_max, tables=tables)
    if family == "logreg":
        logreg = LogRegModel.from_json(body.decode("utf-8"))
        if tuple(logreg.feature_names) != MODEL_INPUTS:
            raise ValueError(f"model {version} takes inputs {list(logreg.feature_names)}, not {list(MODEL_INPUTS)}")
        return LoadedModel(version=version, family=family, features=features, logreg=logreg,
                           exact_reasons_max=exact_reasons_max)
    raise ValueError(f"unknown model family {family!r}")


def current_model_file(state: StateDir, family: str = "xgboost") -> tuple[str, Path, dict[str, Any]] | None:
    """The model of ``family`` to score with (:meth:`StateDir.served_model`): its version, file
    and run record; None when there is none yet.

    The file is where the agent keeps the model of that version and family in this state
    directory (it refuses a model published under a version or family that would name another's
    file), not the path the run record holds: that path is as the agent was given it (relative to
    the agent's working directory when its ``--state-dir`` was), and a state directory restored
    somewhere else holds its models at new paths."""
    record = state.served_model(family)
    if record is None:
        return None
    version = str(record["version"])
    return version, state.model_path(version, family), record


def describe(model: LoadedModel) -> dict[str, Any]:
    """What the scoring service says about the model in use."""
    return {"version": model.version, "family": model.family,
            "consortium_features": model.features.consortium, "terminal_threshold": model.features.threshold,
            "inputs": list(MODEL_INPUTS)}

