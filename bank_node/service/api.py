"""The scoring service's endpoints: score, labels, the model in use, health and readiness."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any, Final

import numpy as np
import orjson
import pandas as pd
from flask import current_app, jsonify, request
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import RAISE, Schema, ValidationError, fields, validate

from bank_node.features import NS_PER_DAY
from bank_node.online import NewTransactions
from bank_node.scoring import describe
from bank_node.service.auth import Role, requires
from consortium.api.bodies import json_bytes, parse_json, parse_json_body
from consortium.errors import Conflict, ConsortiumError, PayloadTooLarge, Unprocessable
from schemas.errors import FedfraudInputError

__all__ = ["blp"]

blp = Blueprint("scoring", __name__, url_prefix="/v1", description="Score transactions on the bank's own node.")


class Unavailable(ConsortiumError):
    """503: the service cannot score now (no model yet, or its inputs cannot be built)."""

    status = 503


class _Strict(Schema):
    class Meta:
        unknown = RAISE


class _LocalTime(fields.NaiveDateTime):
    """A naive ISO 8601 timestamp, parsed by the standard library's C parser (marshmallow's own
    took 45 µs a value: most of a 1,000-transaction request's validation)."""

    DESERIALIZATION_FUNCS = {**fields.NaiveDateTime.DESERIALIZATION_FUNCS, "iso": datetime.fromisoformat}


# The bounds of a transaction, for the schema and for the quick check below alike.
_MAX_ID: Final = 2**63 - 1
_MAX_AMOUNT: Final = 1e9
_EPOCH: Final = datetime(1970, 1, 1)


class _Number(fields.Float):
    """A JSON number: marshmallow's float also takes a numeric string or a boolean, which a
    client sending either has most likely mixed up its fields."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class TransactionSchema(_Strict):
    transaction_id = fields.Integer(required=True, strict=True, validate=validate.Range(min=0, max=_MAX_ID))
    timestamp = _LocalTime(required=True, validate=validate.Range(min=_EPOCH),
                                     metadata={"description": "local time of the bank, ISO 8601"})
    customer_id = fields.Integer(required=True, strict=True, validate=validate.Range(min=0, max=_MAX_ID),
                                 metadata={"description": "the card"})
    terminal_id = fields.Integer(required=True, strict=True, validate=validate.Range(min=0, max=_MAX_ID))
    amount = _Number(required=True, allow_nan=False, validate=validate.Range(min=0, max=_MAX_AMOUNT))


class ScoreRequestSchema(_Strict):
    transactions = fields.List(fields.Nested(TransactionSchema), required=True,
                               validate=validate.Length(min=1))


_TRANSACTION_FIELDS: Final = frozenset(TransactionSchema().fields)


def _plainly_valid(records: Any) -> list[dict[str, Any]] | None:
    """The transactions as :class:`TransactionSchema` loads them, when every one is plainly valid:
    exactly its fields, ids Python ints in range, a naive ISO 8601 timestamp from 1970 on, a finite
    amount in range given as a number. Anything else (a bool, a numeric string, a missing field,
    ...) returns None and the request goes through the schema, which names the problem.

    The schema took 65 ms of a 1,000-transaction request and 0.5 ms of a single one; this check
    accepts only what the schema accepts, and loads it to the same values (tested).
    """
    if type(records) is not list or not records:
        return None
    loaded = []
    for record in records:
        if type(record) is not dict or record.keys() != _TRANSACTION_FIELDS:
            return None
        tx, card, terminal, amount, stamp = (record["transaction_id"], record["customer_id"], record["terminal_id"],
                                             record["amount"], record["timestamp"])
        if not (type(tx) is int and type(card) is int and type(terminal) is int and type(stamp) is str
                and type(amount) in (float, int) and 0 <= tx <= _MAX_ID and 0 <= card <= _MAX_ID
                and 0 <= terminal <= _MAX_ID and 0 <= amount <= _MAX_AMOUNT):
            return None
        try:
            when = datetime.fromisoformat(stamp)
        except ValueError:
            return None
        if when.tzinfo is not None or when < _EPOCH:
            return None
        loaded.append({"transaction_id": tx, "timestamp": when, "customer_id": card, "terminal_id": terminal,
                       "amount": float(amount)})
    return loaded


#: A run of 19 digits: a number orjson may read otherwise than the standard library (an integer
#: beyond 64 bits becomes a float there); such a body is read by the standard library alone.
_LONG_NUMBER: Final = re.compile(rb"[0-9]{19}")


def _quick_json(raw: bytes) -> Any:
    """The body as orjson reads it; None where it refuses or might read a number otherwise."""
    if _LONG_NUMBER.search(raw) is not None:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _plainly_valid_request(document: Any) -> tuple[bool, list[dict[str, Any]] | None]:
    """Whether ``document`` is a single transaction, and its transactions when plainly valid
    (:func:`_plainly_valid`); None for anything the schema must look at."""
    single = type(document) is dict and "transactions" not in document
    if single:
        return True, _plainly_valid([document])
    if type(document) is dict and document.keys() == {"transactions"}:
        return False, _plainly_valid(document["transactions"])
    return False, None


class LabelSchema(_Strict):
    transaction_id = fields.Integer(required=True, strict=True, validate=validate.Range(min=0, max=_MAX_ID))
    label = fields.Integer(required=True, strict=True, validate=validate.OneOf([0, 1]),
                           metadata={"description": "1 confirmed fraud, 0 confirmed genuine"})


class LabelsRequestSchema(_Strict):
    labels = fields.List(fields.Nested(LabelSchema), required=True, validate=validate.Length(min=1))


def _body() -> Any:
    return parse_json_body(int(current_app.config["MAX_BODY_BYTES"]))


def _load(schema: Schema, document: Any) -> dict[str, Any]:
    try:
        loaded: dict[str, Any] = schema.load(document)
    except ValidationError as exc:
        messages = exc.normalized_messages()
        flat: dict[str, list[str]] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for key, inner in value.items():
                    walk(f"{prefix}.{key}" if prefix else str(key), inner)
            else:
                flat[prefix] = [str(m) for m in (value if isinstance(value, list) else [value])]

        walk("", messages)
        first = next(iter(flat.items()))
        raise Unprocessable(f"invalid request: {first[0]}: {first[1][0]}", flat) from None
    return loaded


def _refuse_late(new: NewTransactions, newest_ns: int, max_late_days: int) -> None:
    """422 naming the first transaction timed more than ``max_late_days`` before the newest one
    the node holds (``newest_ns``, 0 when it holds none)."""
    if not newest_ns:
        return
    earliest = newest_ns - max_late_days * NS_PER_DAY
    if int(new.time_ns.min()) >= earliest:
        return
    i = int(np.flatnonzero(new.time_ns < earliest)[0])
    raise Unprocessable(
        f"transactions.{i}.timestamp: {pd.Timestamp(int(new.time_ns[i]))} is more than {max_late_days} days "
        f"before the newest transaction the node holds ({pd.Timestamp(newest_ns):%Y-%m-%d %H:%M}); "
        "a transaction that late is ingested with the history (fedfraud bank ingest), not scored",
        {f"transactions.{i}.timestamp": [f"more than {max_late_days} days late"]})


@blp.route("/score")
class Score(MethodView):
    @requires(Role.SCORER, Role.ADMIN)
    @blp.doc(requestBody={"content": {"application/json": {"schema": ScoreRequestSchema}}})
    def post(self) -> Any:
        """Score one transaction (an object) or several (``{"transactions": [...]}``, in time order).

        Each gets its fraud probability, the decision at the bank's threshold, the model version
        that scored it, and the inputs that pushed its score most. Scored transactions are
        recorded in the node's store (their card's next transaction sees them); a transaction id
        seen before is refused (409) and nothing of the request is recorded."""
        raw = json_bytes(int(current_app.config["MAX_BODY_BYTES"]))
        # orjson first (5x faster than the standard library: 2 ms of a 1,000-transaction request),
        # kept only for a request of plainly valid transactions: flat objects of numbers in range
        # and strings, which both libraries read alike. Anything else is read again by the standard
        # library and goes through the schema, as always.
        single, transactions = _plainly_valid_request(_quick_json(raw))
        if transactions is None:
            document = parse_json(raw)
            single, transactions = _plainly_valid_request(document)
            if transactions is None:
                request_document = {"transactions": [document]} if single else document
                transactions = _load(ScoreRequestSchema(), request_document)["transactions"]
        limit = int(current_app.config["MAX_BATCH"])
        if len(transactions) > limit:
            raise PayloadTooLarge(f"at most {limit} transactions a request; got {len(transactions)}",
                                  {"transactions": [f"more than {limit}"]})
        node = current_app.extensions["fedfraud_scoring"]
        serving = node.holder.serving
        if serving is None:
            raise Unavailable("no model to score with yet: the node has not received a promoted model")
        # A timestamp far ahead of the node's clock is a mistake; recorded, it would also become
        # the newest transaction, which every later window is measured back from.
        latest = datetime.now() + timedelta(seconds=float(current_app.config["MAX_CLOCK_AHEAD_S"]))
        for i, tx in enumerate(transactions):
            if tx["timestamp"] > latest:
                raise Unprocessable(f"transactions.{i}.timestamp: {tx['timestamp']} is ahead of the node's clock "
                                    f"({datetime.now():%Y-%m-%d %H:%M}) by more than "
                                    f"{current_app.config['MAX_CLOCK_AHEAD_S']} s",
                                    {f"transactions.{i}.timestamp": ["ahead of the node's clock"]})
        new = NewTransactions.from_records(transactions)
        _refuse_late(new, node.online.recent.newest, int(current_app.config["MAX_LATE_DAYS"]))
        if len(new) > 1 and len(np.unique(new.txid)) != len(new):
            raise Unprocessable("a transaction id appears twice in the request",
                                {"transactions.transaction_id": ["duplicate"]})
        try:
            featured = node.online.compute(new, consortium=serving.consortium)
        except ValueError as exc:
            raise Unavailable(f"cannot build the model's inputs: {exc}") from None
        X = featured.matrix
        scores = serving.model.score(X)
        try:
            node.online.record(new)
        except FedfraudInputError as exc:  # seen before (or a concurrent request recorded it first)
            raise Conflict(exc.message, {"transactions.transaction_id": exc.errors.get("transaction_id", [])}) from None
        threshold = float(current_app.config["DECISION_THRESHOLD"])
        top = int(current_app.config["TOP_REASONS"])
        version = serving.model.version
        results = [
            {
                "transaction_id": tx,
                "probability": probability,
                "decision": "alert" if probability >= threshold else "pass",
                "model_version": version,
                "reasons": reasons,
                "reasons_exact": scores.exact,
            }
            for tx, probability, reasons in zip(new.txid.tolist(), scores.probability.tolist(),
                                                scores.reason_records(X, top=top), strict=True)
        ]
        node.count(int((scores.probability >= threshold).sum()), len(results))
        return jsonify(results[0] if single else {"model_version": serving.model.version, "results": results})


@blp.route("/labels")
class Labels(MethodView):
    @requires(Role.ADMIN)
    @blp.doc(requestBody={"content": {"application/json": {"schema": LabelsRequestSchema}}})
    def post(self) -> Any:
        """Record confirmed outcomes (``{"labels": [{"transaction_id", "label"}]}``) for the next
        training; labels of transactions the node does not hold are refused (422), nothing recorded."""
        loaded = _load(LabelsRequestSchema(), _body())
        node = current_app.extensions["fedfraud_scoring"]
        labels = pd.DataFrame(loaded["labels"])
        if labels["transaction_id"].duplicated().any():
            raise Unprocessable("a transaction id appears twice in the request", {"labels.transaction_id": ["duplicate"]})
        try:
            # Each request sets the labels it names (a correction, then the first body again, sets
            # them back): no skipping of a body seen before, as a file ingested twice is skipped.
            result = node.store.record_labels(labels, name="POST /v1/labels", sha256=None)
        except FedfraudInputError as exc:
            raise Unprocessable(exc.message, exc.errors) from None
        return jsonify({"labels": result.rows, "updated": result.updated, "unchanged": result.unchanged})


@blp.route("/model")
class Model(MethodView):
    @requires(Role.SCORER, Role.ADMIN)
    def get(self) -> Any:
        """The model in use: version, family, inputs, how its terminal features are built, and
        the run that trained it (as the node's agent recorded it)."""
        node = current_app.extensions["fedfraud_scoring"]
        serving = node.holder.serving
        if serving is None:
            error = node.holder.last_error
            raise Unavailable(f"no model in use yet{': ' + error if error else ''}")
        record = serving.record
        return jsonify({
            **describe(serving.model), "run_id": record.get("run_id"),
            "digest": record.get("digest"), "signed_by": record.get("signed_by", []),
            "last_load_error": node.holder.last_error or None,
        })


@blp.route("/health")
class Health(MethodView):
    def get(self) -> Any:
        """Liveness: the process answers."""
        return jsonify({"status": "ok"})


@blp.route("/ready")
class Ready(MethodView):
    def get(self) -> Any:
        """Readiness: a model is loaded and the store answers (503 otherwise, with why). Asked
        without a token: what went wrong in detail (paths, digests) is for GET /v1/model and the log."""
        node = current_app.extensions["fedfraud_scoring"]
        problems = []
        if node.holder.serving is None:
            problems.append("no model loaded" + (" (the newest failed to load: GET /v1/model or the log says why)"
                                                 if node.holder.last_error else ""))
        try:
            node.store.version()  # one small query, not a scan of the transactions
        except Exception as exc:  # noqa: BLE001 - any database failure means not ready
            problems.append(f"store unavailable: {type(exc).__name__}")
        if problems:
            response = jsonify({"status": "not ready", "problems": problems})
            response.status_code = 503
            return response
        return jsonify({"status": "ready", "model_version": node.holder.serving.model.version})
