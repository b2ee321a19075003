"""The contribution ledger for compliance staff (read-only) and the banks that watch it.

Compliance and operators read entries, exports, the verification and per-bank summaries; every
authenticated caller reads the signing key, checkpoints and proofs (the banks check at every poll
that the log only grew).
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any, Final

from flask import Response
from flask_smorest import Blueprint
from sqlalchemy import Select, func, select

from consortium import ledger
from consortium.api.bodies import json_body
from consortium.api.schemas import (
    BankSummarySchema,
    CheckpointSchema,
    ConsistencyQuerySchema,
    ExportQuerySchema,
    InclusionBatchSchema,
    InclusionQuerySchema,
    LedgerKeySchema,
    LedgerPageSchema,
    LedgerQuerySchema,
    ProofBatchSchema,
    ProofSchema,
    VerificationSchema,
)
from consortium.auth import requires
from consortium.errors import NotFound, Unprocessable
from consortium.storage.database import db
from consortium.storage.models import Bank, Contribution, LedgerEntry, Role
from schemas.ledger import ROTATION, parse_entry
from schemas.privacy import RunPrivacy, compose_epsilon

SUMMARY_DELTA: Final = 1e-5
"""The delta at which a bank's summary states the epsilon its private runs spent together."""

blp = Blueprint("ledger", __name__, url_prefix="/v1/ledger", description="The contribution ledger")

READERS = (Role.COMPLIANCE, Role.OPERATOR)


def entry_view(row: LedgerEntry) -> dict[str, Any]:
    """An entry as the API shows it: its signed fields, its exact text and its checkpoint."""
    fields = parse_entry(row.body)
    return {**fields, "entry": row.body,
            "checkpoint": ledger.checkpoint_of(row, ledger.ledger().origin).to_json()}


def _naive_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo is not None else moment


def filtered(query: dict[str, Any]) -> Select[Any]:
    """Entries matching the filters of :class:`LedgerQuerySchema`, in log order."""
    selected = select(LedgerEntry).order_by(LedgerEntry.seq)
    for name in ("bank_id", "event", "run_id", "model_version"):
        if query.get(name) is not None:
            selected = selected.where(getattr(LedgerEntry, name) == query[name])
    if query.get("since") is not None:
        selected = selected.where(LedgerEntry.at >= _naive_utc(query["since"]))
    if query.get("until") is not None:
        selected = selected.where(LedgerEntry.at < _naive_utc(query["until"]))
    return selected


def page(query: dict[str, Any]) -> dict[str, Any]:
    """One page of matching entries after ``query["after"]``, and the matching total."""
    selected = filtered(query)
    total = db.session.execute(select(func.count()).select_from(selected.subquery())).scalar_one()
    rows = list(db.session.execute(selected.where(LedgerEntry.seq > query["after"]).limit(query["limit"] + 1))
                .scalars())
    more = len(rows) > query["limit"]
    rows = rows[: query["limit"]]
    return {"entries": [entry_view(row) for row in rows], "total": int(total),
            "next_after": rows[-1].seq if more else None}


@blp.route("/key", methods=["GET"])
@requires()
@blp.response(200, LedgerKeySchema)
def key() -> Any:
    """The log's name, the public key that signs its checkpoints now (banks pin it), and the
    entries that rotated it."""
    ledger.proofs(db.session)  # read up to the newest entry: a rotation made by another process
    view = ledger.ledger()
    rows = db.session.execute(select(LedgerEntry.seq, LedgerEntry.body).where(LedgerEntry.event == ROTATION)
                              .order_by(LedgerEntry.seq))
    return {"origin": view.origin, "public_key": view.public_key,
            "rotations": [{"index": seq, "entry": body} for seq, body in rows]}


@blp.route("/checkpoint", methods=["GET"])
@requires()
@blp.response(200, CheckpointSchema)
def checkpoint() -> Any:
    """The newest signed checkpoint: the log's size and Merkle root."""
    return ledger.latest_checkpoint(db.session).to_json()


@blp.route("/entries", methods=["GET"])
@requires(*READERS)
@blp.arguments(LedgerQuerySchema, location="query")
@blp.response(200, LedgerPageSchema)
def entries(query: dict[str, Any]) -> Any:
    """Entries filtered by bank, event, run, model version and time, in log order, paged with
    ``after`` (the ``next_after`` of the previous page)."""
    return page(query)


@blp.route("/entries/<int:index>", methods=["GET"])
@requires(*READERS)
@blp.response(200, ProofSchema)
def entry(index: int) -> Any:
    """One entry's receipt: the entry, its inclusion proof in the newest checkpoint's tree, and
    that checkpoint."""
    newest = ledger.latest_checkpoint(db.session)
    if not 0 <= index < newest.size:
        raise NotFound(f"the ledger holds {newest.size} entries; there is no entry {index}")
    row = db.session.get(LedgerEntry, index)
    assert row is not None
    proof = ledger.proofs(db.session).inclusion_proof(index, newest.size)
    return {"index": index, "entry": row.body, "proof": _b64(proof), "checkpoint": newest.to_json()}


def _b64(hashes: list[bytes]) -> list[str]:
    return [base64.b64encode(h).decode("ascii") for h in hashes]


def _sized(size: int | None) -> tuple[int, dict[str, Any]]:
    """A size of the log and its signed checkpoint (the newest when ``size`` is None)."""
    newest = ledger.latest_checkpoint(db.session)
    if size is None or size == newest.size:
        return newest.size, newest.to_json()
    if size > newest.size:
        raise Unprocessable(f"the ledger holds {newest.size} entries, not {size}", {"size": ["beyond the log"]})
    row = db.session.get(LedgerEntry, size - 1)
    assert row is not None
    return size, ledger.checkpoint_of(row, newest.origin).to_json()


@blp.route("/proofs/inclusion", methods=["GET"])
@requires()
@blp.arguments(InclusionQuerySchema, location="query")
@blp.response(200, ProofSchema)
def inclusion(query: dict[str, Any]) -> Any:
    """The proof that entry ``index`` is in the log of ``size`` entries, with that size's checkpoint."""
    size, signed = _sized(query.get("size"))
    if query["index"] >= size:
        raise Unprocessable(f"entry {query['index']} is not in a log of {size}", {"index": ["beyond the size"]})
    proof = ledger.proofs(db.session).inclusion_proof(query["index"], size)
    return {"index": query["index"], "proof": _b64(proof), "checkpoint": signed}


@blp.route("/proofs/inclusions", methods=["POST"])
@requires()
@json_body
@blp.arguments(InclusionBatchSchema)
@blp.response(200, ProofBatchSchema)
def inclusions(data: dict[str, Any]) -> Any:
    """The proofs that each of ``indices`` is in the log of ``size`` entries, with that size's
    checkpoint: what a bank asks, one request for many, when it confirms that the receipts of its
    contributions are in the log it just accepted (a read; POST only to carry the list)."""
    size, signed = _sized(data.get("size"))
    beyond = [index for index in data["indices"] if index >= size]
    if beyond:
        raise Unprocessable(f"entries {beyond[:10]} are not in a log of {size}", {"indices": ["beyond the size"]})
    tree = ledger.proofs(db.session)
    return {"proofs": [{"index": index, "proof": _b64(tree.inclusion_proof(index, size))} for index in data["indices"]],
            "checkpoint": signed}


@blp.route("/proofs/consistency", methods=["GET"])
@requires()
@blp.arguments(ConsistencyQuerySchema, location="query")
@blp.response(200, ProofSchema)
def consistency(query: dict[str, Any]) -> Any:
    """The proof that the log of ``old`` entries is a prefix of the log of ``new`` (the newest by
    default), with the newer checkpoint: what a bank checks at every poll."""
    size, signed = _sized(query.get("new"))
    if query["old"] > size:
        raise Unprocessable(f"a log of {query['old']} entries is not a prefix of one of {size}",
                            {"old": ["larger than new"]})
    proof = ledger.proofs(db.session).consistency_proof(query["old"], size)
    return {"old": query["old"], "proof": _b64(proof), "checkpoint": signed}


@blp.route("/verification", methods=["GET"])
@requires(*READERS)
@blp.response(200, VerificationSchema)
def verification() -> Any:
    """The whole log checked as stored, from its first entry: how far it holds, and the first bad
    entry if any."""
    return ledger.verify_database(db.session).to_json()


@blp.route("/export", methods=["GET"])
@requires(*READERS)
@blp.arguments(ExportQuerySchema, location="query")
@blp.doc(responses={"200": {"description": "JSON Lines (the whole log with proofs) or CSV (filtered)",
                            "content": {"application/x-ndjson": {}, "text/csv": {}}}})
def export(query: dict[str, Any]) -> Response:
    """The whole log: JSON Lines with each entry's signed checkpoint and inclusion proof (what
    ``fedfraud ledger verify`` checks offline), or CSV for spreadsheets."""
    return ledger.export_response(query["format"])


@blp.route("/banks", methods=["GET"])
@requires(*READERS)
@blp.response(200, BankSummarySchema(many=True))
def bank_summaries() -> Any:
    """Per bank: runs joined, contributions and their bytes, refusals, withdrawals, proposals,
    last seen in the ledger."""
    return summaries_view()


def summaries_view() -> list[dict[str, Any]]:
    """Per-bank summaries (the API's and the compliance pages')."""
    session = db.session
    contributed = {bank_id: (runs, count, size) for bank_id, runs, count, size in session.execute(
        select(Contribution.bank_id, func.count(func.distinct(Contribution.run_id)), func.count(),
               func.coalesce(func.sum(Contribution.payload_size), 0)).group_by(Contribution.bank_id))}
    events: dict[tuple[str | None, str], int] = {(bank_id, event): count for bank_id, event, count in session.execute(
        select(LedgerEntry.bank_id, LedgerEntry.event, func.count())
        .where(LedgerEntry.bank_id.is_not(None)).group_by(LedgerEntry.bank_id, LedgerEntry.event))}
    last_seen = dict(session.execute(select(LedgerEntry.bank_id, func.max(LedgerEntry.at))
                                     .where(LedgerEntry.bank_id.is_not(None)).group_by(LedgerEntry.bank_id)).all())
    # One entry per bank, run and epoch the run was (re)started in: each is a release to compose.
    private_runs: dict[str, list[list[tuple[float, int]]]] = {}
    private_run_ids: dict[str, set[str]] = {}
    for bank_id, run_id, body in session.execute(
            select(LedgerEntry.bank_id, LedgerEntry.run_id, LedgerEntry.body)
            .where(LedgerEntry.event == "privacy.spent").order_by(LedgerEntry.seq)):
        private_runs.setdefault(str(bank_id), []).append(RunPrivacy.mechanisms_of(parse_entry(body)["details"]))
        private_run_ids.setdefault(str(bank_id), set()).add(str(run_id))
    summaries = []
    for bank in session.execute(select(Bank).order_by(Bank.bank_id)).scalars():
        runs, count, size = contributed.get(bank.bank_id, (0, 0, 0))
        seen = last_seen.get(bank.bank_id)
        summaries.append({
            "bank_id": bank.bank_id, "name": bank.name, "runs_joined": int(runs), "contributions": int(count),
            "bytes": int(size), "refusals": events.get((bank.bank_id, "contribution.refused"), 0),
            "withdrawals": events.get((bank.bank_id, "run.withdrawal"), 0),
            "proposals": events.get((bank.bank_id, "proposal.received"), 0),
            "last_seen": None if seen is None else seen.isoformat(timespec="milliseconds") + "Z",
            "privacy_budget_spent": (None if bank.bank_id not in private_runs
                                     else compose_epsilon([m for run in private_runs[bank.bank_id] for m in run],
                                                          SUMMARY_DELTA)),
            "private_runs": len(private_run_ids.get(bank.bank_id, set())),
        })
    return summaries
