"""What a training run asks of the banks: its model family's parameters and its data window.

The same schemas validate a run where it is opened (the consortium refuses it at the door, and
documents them in its OpenAPI document) and where it is trained (each bank agent checks again,
since it trusts nothing the server sends). Unknown names are errors on both sides: a typo must not
silently train with a default.

The window is what makes every bank train and validate on the same days, whatever its command
line says (dates are days, in the consortium's calendar)::

    |<-- train_days -->|<-- validation_days -->|<-- label_delay_days -->|
    train_start        validation_start        labels_known_until       as_of
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Final

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from schemas.errors import FedfraudInputError
from schemas.privacy import DEFAULT_VALIDATION_DAYS, PRIVACY_PARAMS

__all__ = [
    "DEFAULT_TERMINAL_THRESHOLD",
    "FEATURE_PARAMS",
    "LOGREG_LIMITS",
    "MODEL_FAMILIES",
    "XGBOOST_LIMITS",
    "LogRegParamsSchema",
    "RunWindow",
    "RunWindowSchema",
    "XGBoostParamsSchema",
    "load_run_params",
    "load_window",
    "split_run_params",
]

MODEL_FAMILIES: Final = ("xgboost", "logreg")

XGBOOST_LIMITS: Final = {"n_trees": (1, 2000), "max_depth": (1, 10), "n_bins": (2, 1024)}
"""Bounds that keep one run within what a bank can afford: each level of a depth-``d`` tree sends
``2^(d-1) x features x bins x 2`` encrypted values per bank."""
LOGREG_LIMITS: Final = {"max_rounds": (1, 500)}


def _int(name: str, low: int, high: int, description: str) -> fields.Integer:
    return fields.Integer(
        strict=True,
        validate=validate.Range(min=low, max=high, error=f"{name} must be from {low} to {high}"),
        metadata={"description": description},
    )


def _float(name: str, description: str, *, low: float, high: float, min_inclusive: bool = True,
           max_inclusive: bool = True) -> fields.Float:
    left, right = "[" if min_inclusive else "(", "]" if max_inclusive else ")"
    return fields.Float(
        allow_nan=False,
        validate=validate.Range(min=low, max=high, min_inclusive=min_inclusive, max_inclusive=max_inclusive,
                                error=f"{name} must be in {left}{low:g}, {high:g}{right}"),
        metadata={"description": description},
    )


class _Strict(Schema):
    class Meta:
        unknown = RAISE


class _FeatureParams(_Strict):
    """What the model's inputs are made of (the same for every model family)."""

    consortium_features = fields.Boolean(
        truthy={True}, falsy={False},
        metadata={"description": "replace each bank's terminal features by their values over all banks' "
                                 "transactions, pooled under encryption (default false)"})
    terminal_threshold = _int("terminal_threshold", 3, 1000,
                              "fewest banks that must have seen a terminal for it to get consortium values "
                              "(default 3: with two, a bank could subtract its own events and read the other's)")


class _PrivacyParams(_FeatureParams):
    """Differential privacy of the run's training sums (schemas/privacy.py; docs/threat-model.md)."""

    dp_epsilon = _float("dp_epsilon", "train with differential privacy: the run's epsilon, for all its training "
                        "sums together (each bank adds the noise; default: no differential privacy)",
                        low=0.01, high=100.0)
    dp_delta = _float("dp_delta", "the run's delta (default 1e-5; only with dp_epsilon)", low=1e-12, high=1e-3)
    dp_clip = _float("dp_clip", "bound on one transaction's gradient, its Hessian a quarter of it (default 1; "
                     "only with dp_epsilon)", low=1e-3, high=1e3)

    terminal_dp_epsilon = _float(
        "terminal_dp_epsilon", "with consortium_features and dp_epsilon: pool noisy day counts per terminal "
        "instead of exact events, epsilon for each day's release (the terminal windows are then taken over whole "
        "days; default: exact events)", low=0.01, high=100.0)

    gate_dp_epsilon = _float(
        "gate_dp_epsilon", "with dp_epsilon: epsilon of the promotion gate's release (each bank's score histograms "
        "of the candidate and the current model, in coarser bins, with noise; default: the run's dp_epsilon)",
        low=0.01, high=100.0)

    @validates_schema
    def _privacy_needs_epsilon(self, data: dict[str, Any], **kwargs: Any) -> None:
        alone = [name for name in ("dp_delta", "dp_clip", "terminal_dp_epsilon", "gate_dp_epsilon")
                 if name in data and "dp_epsilon" not in data]
        if alone:
            raise ValidationError({name: ["only with dp_epsilon"] for name in alone})
        if "terminal_dp_epsilon" in data and not data.get("consortium_features"):
            raise ValidationError({"terminal_dp_epsilon": ["only with consortium_features"]})


FEATURE_PARAMS: Final = ("consortium_features", "terminal_threshold", "terminal_dp_epsilon")
"""Params that say how inputs are built, not how the model is fitted."""
DEFAULT_TERMINAL_THRESHOLD: Final = 3


class XGBoostParamsSchema(_PrivacyParams):
    """Parameters of federated gradient-boosted trees (XGBoost's meaning, ``tree_method=hist``)."""

    n_trees = _int("n_trees", *XGBOOST_LIMITS["n_trees"], "boosting rounds (XGBoost num_boost_round)")
    max_depth = _int("max_depth", *XGBOOST_LIMITS["max_depth"], "depth of every tree")
    n_bins = _int("n_bins", *XGBOOST_LIMITS["n_bins"], "most histogram bins per feature (XGBoost max_bin)")
    eta = _float("eta", "learning rate", low=0.0, high=1.0, min_inclusive=False)
    reg_lambda = _float("reg_lambda", "L2 regularisation of leaf weights (XGBoost lambda)", low=0.0, high=1e6)
    gamma = _float("gamma", "minimum loss reduction to split", low=0.0, high=1e6)
    min_child_weight = _float("min_child_weight", "minimum hessian sum in a child", low=0.0, high=1e6)
    base_score = _float("base_score", "initial probability", low=0.0, high=1.0, min_inclusive=False,
                        max_inclusive=False)
    scale_pos_weight = _float("scale_pos_weight", "weight of fraud rows", low=0.0, high=1e6, min_inclusive=False)
    subsample = _float("subsample", "fraction of rows drawn per tree", low=0.0, high=1.0, min_inclusive=False)
    colsample_bytree = _float("colsample_bytree", "fraction of features drawn per tree", low=0.0, high=1.0,
                              min_inclusive=False)
    seed = _int("seed", 0, 2**31 - 1, "seed of the samplers")


class LogRegParamsSchema(_PrivacyParams):
    """Parameters of federated logistic regression (scikit-learn's meaning of C)."""

    C = _float("C", "inverse L2 regularisation strength", low=0.0, high=1e6, min_inclusive=False)
    class_weight = fields.String(allow_none=True, validate=validate.OneOf(["balanced"]),
                                 metadata={"description": "'balanced' or null"})
    max_rounds = _int("max_rounds", *LOGREG_LIMITS["max_rounds"], "most Newton rounds")
    tol = _float("tol", "stop when no weight moves more", low=0.0, high=1.0, min_inclusive=False)


_PARAMS_SCHEMAS: Final[dict[str, type[Schema]]] = {"xgboost": XGBoostParamsSchema, "logreg": LogRegParamsSchema}


def load_run_params(model: str, params: Any) -> dict[str, Any]:
    """The run's params, validated for its model family.

    Raises
    ------
    FedfraudInputError
        An unknown family, an unknown name, a wrong type or a value out of range; ``errors``
        maps ``params.<name>`` to what is wrong.
    """
    schema = _PARAMS_SCHEMAS.get(model)
    if schema is None:
        raise FedfraudInputError(f"unknown model family {model!r}", {"model": [f"one of {', '.join(MODEL_FAMILIES)}"]})
    return _load(schema(), params, "params", f"invalid {model} params")


def split_run_params(model: str, params: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run's params, validated, as (the model family's own, the feature settings)."""
    loaded = load_run_params(model, params)
    features: dict[str, Any] = {name: loaded.pop(name) for name in FEATURE_PARAMS if name in loaded}
    for name in PRIVACY_PARAMS:
        loaded.pop(name, None)
    return loaded, features


def _load(schema: Schema, document: Any, field: str, message: str) -> dict[str, Any]:
    """``schema``'s load of a JSON object, its errors named ``field.<name>``."""
    if not isinstance(document, Mapping):
        raise FedfraudInputError(f"{field} must be a JSON object", {field: ["not an object"]})
    try:
        loaded: dict[str, Any] = schema.load(dict(document))
    except ValidationError as exc:
        errors = exc.normalized_messages()
        assert isinstance(errors, dict)
        named = {f"{field}.{name}": [str(m) for m in (msgs if isinstance(msgs, list) else [msgs])]
                 for name, msgs in errors.items()}
        raise FedfraudInputError(message, named) from None
    return loaded


@dataclass(frozen=True)
class RunWindow:
    """The days a run trains and validates on (see the module docstring)."""

    as_of: date
    train_days: int = 7
    validation_days: int = DEFAULT_VALIDATION_DAYS
    label_delay_days: int = 7

    @property
    def labels_known_until(self) -> date:
        """Last day whose labels count as known (exclusive end of validation)."""
        return self.as_of - timedelta(days=self.label_delay_days)

    @property
    def validation_start(self) -> date:
        """First validation day."""
        return self.labels_known_until - timedelta(days=self.validation_days)

    @property
    def train_start(self) -> date:
        """First training day."""
        return self.validation_start - timedelta(days=self.train_days)

    def to_json(self) -> dict[str, Any]:
        """The window as the API carries it."""
        return {"as_of": self.as_of.isoformat(), "train_days": self.train_days,
                "validation_days": self.validation_days, "label_delay_days": self.label_delay_days}


class RunWindowSchema(_Strict):
    """The run's data window: every bank trains and validates on these days."""

    as_of = fields.Date(required=True, metadata={"description": "the night the run is for (YYYY-MM-DD)"})
    train_days = _int("train_days", 1, 366, "days of training data")
    validation_days = _int("validation_days", 0, 92, "days of validation data after the training days")
    label_delay_days = _int("label_delay_days", 0, 92, "days before as_of whose fraud labels are not known yet")


def load_window(document: Any) -> RunWindow:
    """A :class:`RunWindow` from its JSON form.

    Raises
    ------
    FedfraudInputError
        A missing or malformed field, or a value out of range.
    """
    return RunWindow(**_load(RunWindowSchema(), document, "window", "invalid window"))
