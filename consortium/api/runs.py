"""Runs, and under each run its rounds' contributions and aggregates and the model proposals."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC
from typing import Any, Final
from zoneinfo import ZoneInfo

from flask import Response, current_app, jsonify, request
from flask_smorest import Blueprint
from sqlalchemy import select

from consortium import ledger, publishing, rounds, runs
from consortium.api.bodies import (
    BINARY,
    BINARY_REQUEST,
    SIGNATURE_PARAMETER,
    binary_body,
    binary_response,
    json_body,
    read_binary,
)
from consortium.api.schemas import (
    AssessmentPostedSchema,
    RunCancelSchema,
    RunWithdrawSchema,
    WaitQuerySchema,
    ContributionStoredSchema,
    NotePostedSchema,
    NotesSchema,
    ProposalOutcomeSchema,
    RoundStatusSchema,
    RunOpenSchema,
    RunQuerySchema,
    RunSchema,
    RunViewQuerySchema,
)
from consortium.auth import current_principal, requires
from consortium.ceremony import get_bank
from consortium.errors import Conflict, ConsortiumError, Forbidden, Unprocessable
from consortium.extensions import now, recent_sums, round_generation, wait_for_round_change
from consortium.secure_sum import RoundState
from consortium.storage.blobs import sha256_hex
from consortium.storage.database import db
from consortium.storage.models import ID_SEGMENT, ROUND_KEY_LENGTH, Contribution, Role, RoundRow, Run
from schemas.round_key import training_progress
from schemas.run import RunWindow

RECEIPT_HEADER: Final = "X-Fedfraud-Receipt"
PRIVACY_RECEIPT_HEADER: Final = "X-Fedfraud-Privacy-Receipt"

blp = Blueprint("runs", __name__, url_prefix="/v1/runs", description="Training runs, rounds, aggregates, proposals")

CONTRIBUTORS_HEADER: Final = "X-Fedfraud-Contributors"
"""Header of a released sum: the comma-separated ids of the banks summed in it."""
ROUND_KEY_PATTERN: Final = rounds.ROUND_KEY_PATTERN
MAX_ROUND_KEY: Final = ROUND_KEY_LENGTH


def _check_round_key(round_key: str) -> None:
    if len(round_key) > MAX_ROUND_KEY or not ROUND_KEY_PATTERN.match(round_key):
        message = (
            f"round keys are '/'-separated segments matching ^{ID_SEGMENT}$, "
            f"at most {MAX_ROUND_KEY} characters"
        )
        raise Unprocessable(f"invalid round key {round_key[:80]!r}", {"round_key": [message]})


def round_view(current: RoundRow, run: Run, contributors: list[str] | None = None) -> dict[str, Any]:
    """A round as the API shows it (never its payloads); ``contributors`` when already read."""
    if contributors is None:
        contributors = rounds.contributors_of(db.session, current.id)
    return {
        "round_key": current.round_key,
        "state": current.state,
        "n_values": current.n_values,
        "contributed": len(contributors),
        "contributors": contributors,
        "participants": len(rounds.expected_banks(run, current.round_key)),
        "dropped": list(current.dropped or []),
        "opened_at": current.opened_at,
        "deadline": current.deadline,
        "closed_at": current.closed_at,
        "failure_reason": current.failure_reason,
    }


def run_view(run: Run, *, with_rounds: bool = True) -> dict[str, Any]:
    """A run with its rounds (without them, its progress still counts them: one column read)."""
    view: dict[str, Any] = {}
    if with_rounds:
        round_rows = list(db.session.execute(
            select(RoundRow).where(RoundRow.run_id == run.run_id).order_by(RoundRow.id)).scalars())
        # Every round's contributors in one query (a run has hundreds of rounds; a view is polled).
        contributors: dict[int, list[str]] = {row.id: [] for row in round_rows}
        for round_id, bank_id in db.session.execute(
                select(Contribution.round_id, Contribution.bank_id).where(Contribution.run_id == run.run_id)
                .order_by(Contribution.round_id, Contribution.bank_id)):
            if round_id in contributors:  # a round opened since the rounds were read is left to the next look
                contributors[round_id].append(bank_id)
        view["rounds"] = [round_view(row, run, contributors[row.id]) for row in round_rows]
        released = [row.round_key for row in round_rows if row.state == RoundState.RELEASED.value]
    else:
        released = list(db.session.execute(
            select(RoundRow.round_key).where(RoundRow.run_id == run.run_id,
                                             RoundRow.state == RoundState.RELEASED.value).order_by(RoundRow.id)).scalars())
    model = publishing.model_for_run(db.session, run.run_id)
    return {
        "run_id": run.run_id,
        "model": run.model,
        "params": run.params,
        "min_banks": run.min_banks,
        "round_timeout_s": run.round_timeout_s,
        "participants": list(run.participants),
        "key_id": run.key_id,
        "window": run.window,
        "deadline": run.deadline,
        "withdrawn": dict(run.withdrawn or {}),
        "baseline_version": run.baseline_version,
        "promotion_tolerance": run.promotion_tolerance,
        "state": run.state,
        "failure_reason": run.failure_reason,
        "created_at": run.created_at,
        "finished_at": run.finished_at,
        **view,
        "progress": training_progress(run.model, dict(run.params or {}), released),
        "model_version": None if model is None else model.version,
    }


LONG_POLL_INTERVAL_S: Final = 0.05
"""Longest pause between two reads of a waited-on round: changes made by this process wake the
wait at once, so this bounds only how late a change made by another worker process is seen."""


def _watch(run_id: str, round_key: str, done: Callable[[rounds.RoundProgress], bool],
           wait_s: float) -> rounds.RoundProgress | None:
    """Watch the round until ``done``, its deadline, or ``wait_s`` seconds passed; its last
    :class:`rounds.RoundProgress` (None: no such round). A change committed in this process
    wakes the wait at once; another worker's is seen at the next look (every
    ``LONG_POLL_INTERVAL_S``). Each look is one light read (:func:`rounds.round_progress`) and
    ends its read transaction, so that other workers' commits are seen."""
    deadline = time.monotonic() + wait_s
    seen = round_generation()
    progress = rounds.round_progress(db.session, run_id, round_key)
    while (progress is not None and not done(progress) and time.monotonic() < deadline
           and not progress.due):
        db.session.rollback()
        wait_for_round_change(seen, min(LONG_POLL_INTERVAL_S, max(0.0, deadline - time.monotonic())))
        seen = round_generation()
        progress = rounds.round_progress(db.session, run_id, round_key)
    return progress


def _sum_or_round(run_id: str, round_key: str, wait_s: float) -> Response | RoundRow:
    """After waiting up to ``wait_s`` for the round to close: the answer with its sum if it is
    released (read from its progress row: the common case, every bank of every round), else the
    round as stored (open, failed, or settled at its deadline just now; 404 if there is none)."""
    progress = _watch(run_id, round_key, _closed, wait_s)
    if progress is not None and progress.state == RoundState.RELEASED.value and progress.aggregate_digest:
        return _sum_response(progress.aggregate_digest, rounds.contributors_of(db.session, progress.round_id))
    current = rounds.observed_round(db.session, run_id, round_key)
    if current.state == RoundState.RELEASED.value and current.aggregate_digest:  # released at its deadline
        return _sum_response(current.aggregate_digest, rounds.contributors_of(db.session, current.id))
    return current


def _closed(progress: rounds.RoundProgress) -> bool:
    return progress.state != RoundState.OPEN.value


def _sum_response(digest: str, contributors: list[str]) -> Response:
    """A released round's sum (stored as ``digest``), with the banks summed in it."""
    response = Response(recent_sums().get(digest), mimetype=BINARY)
    response.set_etag(digest)
    response.headers[CONTRIBUTORS_HEADER] = ",".join(contributors)
    return response


def _participant(run: Run) -> str:
    return _one_of(run.run_id, run.participants)


def _one_of(run_id: str, participants: list[str]) -> str:
    """The calling bank, if it is one of the run's ``participants``; else 403."""
    principal = current_principal()
    if principal.bank_id is None or principal.bank_id not in participants:
        raise Forbidden(f"only the participants of run {run_id!r} may do this")
    return principal.bank_id


def _calling_participant(run_id: str) -> str:
    """The calling bank, if the run exists (404) and the bank takes part in it (403): the run's
    participants alone are read, for the requests every bank makes every round."""
    return _one_of(run_id, rounds.run_participants(db.session, run_id))


@blp.route("", methods=["POST"])
@requires(Role.OPERATOR)
@json_body
@blp.arguments(RunOpenSchema)
@blp.response(201, RunSchema)
@blp.alt_response(409, description="the key ceremony has not happened")
def open_run(data: dict[str, Any]) -> Any:
    """Open a training run under the current HE key; participants default to every member of that
    key's roster with registered keys."""
    config = current_app.config
    run = runs.open_run(
        db.session,
        model=data["model"],
        params=data.get("params") or {},
        min_banks=data.get("min_banks", config["DEFAULT_MIN_BANKS"]),
        round_timeout_s=data.get("round_timeout_s", config["DEFAULT_ROUND_TIMEOUT_S"]),
        participants=data.get("participants"),
        window=_window(data.get("window"), config),
        run_timeout_s=data.get("run_timeout_s", config["DEFAULT_RUN_TIMEOUT_S"]),
        promotion_tolerance=float(config["PROMOTION_TOLERANCE"]),
    )
    return run_view(run)


def _window(given: dict[str, Any] | None, config: Any) -> RunWindow:
    """The requested window, or today's in the consortium's time zone with the configured days."""
    defaults = {"train_days": config["DEFAULT_TRAIN_DAYS"], "validation_days": config["DEFAULT_VALIDATION_DAYS"],
                "label_delay_days": config["DEFAULT_LABEL_DELAY_DAYS"]}
    if given is None:
        today = now().replace(tzinfo=UTC).astimezone(ZoneInfo(config["TIME_ZONE"])).date()
        return RunWindow(as_of=today, **defaults)
    return RunWindow(**{**defaults, **given})


@blp.route("/<string:run_id>/cancel", methods=["POST"])
@requires(Role.OPERATOR)
@json_body
@blp.arguments(RunCancelSchema)
@blp.response(200, RunSchema)
@blp.alt_response(409, description="the run is not open")
def cancel_run(data: dict[str, Any], run_id: str) -> Any:
    """Stop an open run: it ends ``cancelled`` with the reason given, and publishes nothing."""
    run = runs.cancel_run(db.session, rounds.get_run(db.session, run_id), reason=data["reason"])
    return run_view(run)


@blp.route("/<string:run_id>/withdrawals", methods=["POST"])
@requires(Role.BANK)
@json_body
@blp.arguments(RunWithdrawSchema)
@blp.response(200, RunSchema)
@blp.alt_response(409, description="the run is not open, or the bank withdrew already")
def withdraw(data: dict[str, Any], run_id: str) -> Any:
    """A participant bank that cannot take part says why. The run goes on without it while a
    quorum of banks is left, and fails with every withdrawn bank's reason otherwise."""
    run = rounds.get_run(db.session, run_id)
    bank_id = _participant(run)
    return run_view(runs.withdraw(db.session, run, bank_id, reason=data["reason"]))


@blp.route("", methods=["GET"])
@requires()
@blp.arguments(RunQuerySchema, location="query")
@blp.response(200, RunSchema(many=True))
def list_runs(query: dict[str, Any]) -> Any:
    """Runs, newest first; ``?state=open`` filters, ``?rounds=false`` leaves each run's rounds out."""
    for run in runs.list_runs(db.session, "open"):
        rounds.settle_run(db.session, run)
    return [run_view(run, with_rounds=query["rounds"]) for run in runs.list_runs(db.session, query.get("state"))]


@blp.route("/<string:run_id>", methods=["GET"])
@requires()
@blp.arguments(RunViewQuerySchema, location="query")
@blp.response(200, RunSchema)
def get_run(query: dict[str, Any], run_id: str) -> Any:
    """A run: state, participants, rounds (contributors, dropped banks), progress, failure reason;
    ``?rounds=false`` leaves the rounds out."""
    run = rounds.settle_run(db.session, rounds.get_run(db.session, run_id))
    return run_view(run, with_rounds=query["rounds"])


@blp.route("/<string:run_id>/contributions/<path:round_key>", methods=["PUT"])
@requires(Role.BANK)
@binary_body
@blp.doc(requestBody=BINARY_REQUEST, parameters=[SIGNATURE_PARAMETER],
         responses={"200": binary_response("with ?wait: the round's sum, released within the wait")})
@blp.arguments(WaitQuerySchema, location="query")
@blp.response(201, ContributionStoredSchema)
@blp.alt_response(409, description="replay, or the round or run is closed")
@blp.alt_response(422, description="a payload of another scheme or key, truncated, corrupted or of the wrong length")
def contribute(query: dict[str, Any], run_id: str, round_key: str) -> Any:
    """Upload the bank's encrypted payload for a round (signed). With ``?wait=S`` the answer waits
    for the round (at most S seconds): 200 with the sum if it was released by then (one request
    instead of an upload and a poll), else 201 as without."""
    _check_round_key(round_key)
    run = rounds.get_run(db.session, run_id)
    bank_id = _participant(run)
    payload = read_binary()
    try:
        current, entry = rounds.contribute(
            db.session,
            run_id=run_id,
            round_key=round_key,
            bank_id=bank_id,
            payload=payload,
            signature=request.headers.get("X-Fedfraud-Signature"),
        )
    except ConsortiumError as exc:
        ledger.record_refusal(db.session, bank_id=bank_id, run_id=run_id, round_key=round_key, payload=payload,
                              refusal=exc)
        if isinstance(exc, Conflict) and rounds.contributed(db.session, run_id, round_key, bank_id):
            # A replay (the bank restarted): the receipt of its privacy spend in the epoch comes
            # back too, so that it checks the spend whether or not it saw the first answer.
            spent = rounds.privacy_entry(db.session, run, bank_id, round_key)
            if spent is not None:
                exc.extra["privacy_receipt"] = ledger.receipt(db.session, spent)
        raise
    receipt = ledger.receipt(db.session, entry)
    spent = rounds.privacy_entry(db.session, run, bank_id, round_key)
    privacy_receipt = None if spent is None else ledger.receipt(db.session, spent)
    if query["wait"] > 0:
        answer = _sum_or_round(run_id, round_key, query["wait"])
        if not isinstance(answer, RoundRow):
            answer.headers[RECEIPT_HEADER] = ledger.receipt_header(receipt)
            if privacy_receipt is not None:
                answer.headers[PRIVACY_RECEIPT_HEADER] = ledger.receipt_header(privacy_receipt)
            return answer
        current = answer
    view = round_view(current, run)
    return {
        "receipt": receipt,
        "privacy_receipt": privacy_receipt,
        "run_id": run_id,
        "round_key": round_key,
        "bank_id": bank_id,
        "digest": sha256_hex(payload),
        "size": len(payload),
        "state": view["state"],
        "contributed": view["contributed"],
        "participants": view["participants"],
    }


@blp.route("/<string:run_id>/aggregates/<path:round_key>", methods=["GET"])
@requires(Role.BANK)
@blp.doc(responses={"200": binary_response("the released sum (a ciphertext payload)")})
@blp.arguments(WaitQuerySchema, location="query")
@blp.alt_response(202, schema=RoundStatusSchema, description="the round is still open")
@blp.alt_response(409, description="the round failed (no quorum)")
def get_aggregate(query: dict[str, Any], run_id: str, round_key: str) -> Any:
    """The round's sum once released; 202 while open; 409 if it failed. With ``?wait=S`` an open
    round is answered when it closes or after S seconds (long poll; banks only call out)."""
    _calling_participant(run_id)
    current = _sum_or_round(run_id, round_key, query["wait"])
    if not isinstance(current, RoundRow):
        return current
    view = round_view(current, rounds.get_run(db.session, run_id))
    if current.state == RoundState.FAILED.value:
        raise Conflict(
            f"round {round_key!r} failed: {current.failure_reason}",
            state="failed",
            contributed=view["contributed"],
            participants=view["participants"],
            dropped=view["dropped"],
            reason=current.failure_reason,
        )
    status = {"state": current.state, "contributed": view["contributed"], "participants": view["participants"]}
    return RoundStatusSchema().dump(status), 202


@blp.route("/<string:run_id>/notes/<path:round_key>", methods=["PUT"])
@requires(Role.BANK)
@binary_body
@blp.doc(requestBody=BINARY_REQUEST, parameters=[SIGNATURE_PARAMETER])
@blp.arguments(WaitQuerySchema, location="query")
@blp.response(201, NotePostedSchema)
@blp.alt_response(200, schema=NotesSchema, description="with ?wait: every note posted within the wait")
@blp.alt_response(409, description="the round is not released, the bank is not in its sum, or it posted already")
def post_note(query: dict[str, Any], run_id: str, round_key: str) -> Any:
    """Post the bank's signed note (its self-mask seed) to a released round it is summed in. With
    ``?wait=S``, answered 200 with every note once all summed banks posted theirs (or after S s)."""
    _check_round_key(round_key)
    bank = rounds.signer(db.session, _calling_participant(run_id))
    row = rounds.post_note(db.session, run_id=run_id, round_key=round_key, bank=bank, note=read_binary(),
                           signature=request.headers.get("X-Fedfraud-Signature"))
    if query["wait"] > 0:
        # A Response, so that the 201 schema of the plain answer does not reshape it.
        return jsonify(NotesSchema().dump(_notes_view(run_id, round_key, query["wait"])))
    return {"run_id": run_id, "round_key": round_key, "bank_id": row.bank_id, "posted_at": row.posted_at}


@blp.route("/<string:run_id>/notes/<path:round_key>", methods=["GET"])
@requires(Role.BANK)
@blp.arguments(WaitQuerySchema, location="query")
@blp.response(200, NotesSchema)
def get_notes(query: dict[str, Any], run_id: str, round_key: str) -> Any:
    """The notes posted to a round so far, each with its bank's signature, and the banks summed.
    With ``?wait=S``, answered when every summed bank posted its note or after S seconds."""
    _calling_participant(run_id)
    return _notes_view(run_id, round_key, query["wait"])


def _notes_view(run_id: str, round_key: str, wait_s: float) -> dict[str, Any]:
    """A round's notes and summed banks, after waiting up to ``wait_s`` for every summed bank's."""

    def complete(progress: rounds.RoundProgress) -> bool:
        if progress.state != RoundState.RELEASED.value:
            return progress.state != RoundState.OPEN.value
        return progress.notes >= progress.contributions

    state, round_id = rounds.settled_state(db.session, run_id, round_key, _watch(run_id, round_key, complete, wait_s))
    return {
        "round_key": round_key,
        "state": state,
        "summed": rounds.contributors_of(db.session, round_id),
        "notes": [
            {"bank_id": row.bank_id, "note": row.note, "signature": row.signature}
            for row in rounds.notes_of(db.session, round_id)
        ],
    }


@blp.route("/<string:run_id>/assessments", methods=["PUT"])
@requires(Role.BANK)
@binary_body
@blp.doc(requestBody=BINARY_REQUEST, parameters=[SIGNATURE_PARAMETER])
@blp.response(201, AssessmentPostedSchema)
@blp.alt_response(409, description="the run is closed, or the bank assessed it differently already")
@blp.alt_response(422, description="not an assessment, or one against another baseline or tolerance")
def post_assessment(run_id: str) -> Any:
    """Post the bank's signed assessment of its candidate against the run's baseline (canonical
    JSON, ``schemas/assessment.py``), before its proposal. Signed as
    ``fedfraud-assessment-v1\n{run_id}\n{bank_id}\n{sha256 hex}``."""
    run = rounds.get_run(db.session, run_id)
    bank = get_bank(db.session, _participant(run))
    row = publishing.post_assessment(db.session, run_id=run_id, bank=bank, body=read_binary(),
                                     signature=request.headers.get("X-Fedfraud-Signature"))
    return {"run_id": run_id, "bank_id": row.bank_id, "posted_at": row.posted_at}


@blp.route("/<string:run_id>/proposals", methods=["POST"])
@requires(Role.BANK)
@binary_body
@blp.doc(requestBody=BINARY_REQUEST, parameters=[SIGNATURE_PARAMETER])
@blp.response(201, ProposalOutcomeSchema)
@blp.alt_response(200, schema=ProposalOutcomeSchema, description="the same proposal again (nothing new recorded)")
@blp.alt_response(409, description="the run is not open")
def propose(run_id: str) -> Any:
    """Propose the finished model (signed); published when every contributing bank agrees."""
    run = rounds.get_run(db.session, run_id)
    bank = get_bank(db.session, _participant(run))
    outcome = publishing.propose(
        db.session, run_id=run_id, bank=bank, body=read_binary(), signature=request.headers.get("X-Fedfraud-Signature")
    )
    body = {
        "run_id": run_id,
        "bank_id": bank.bank_id,
        "digest": outcome.proposal.model_digest,
        "state": "published" if outcome.model is not None else "waiting",
        "agreed": outcome.agreed,
        "required": outcome.required,
        "model_version": None if outcome.model is None else outcome.model.version,
    }
    return body, (201 if outcome.created else 200)
