"""Proposals of finished models, and publication once a quorum of full contributors agrees.

A model is published when at least the run's quorum of banks that contributed to *every*
released round of the run, and more than half of those banks, signed proposals of the same
digest. A bank that took part in no round, or skipped one, is not counted; a run with no
released round publishes nothing. Every proposal's signature is kept, so banks can check them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from consortium.errors import BadRequest, Conflict, Forbidden, NotFound, Unprocessable
from consortium.extensions import blob_store, now, write_lock
from consortium.ledger import record
from consortium.rounds import get_run
from consortium.secure_sum import MIN_BANKS, RoundState
from consortium.storage.models import (
    Assessment,
    Bank,
    Contribution,
    CurrentModel,
    Proposal,
    PublishedModel,
    RoundRow,
    Run,
    RunState,
)
from crypto.signing import SignatureError as SignatureFailure
from crypto.signing import verify as verify_signature
from schemas.assessment import Assessment as AssessmentDocument

__all__ = [
    "ProposalOutcome", "contributors", "current_model", "get_model", "list_models", "make_current", "needs_assessment",
    "post_assessment", "proposals_for", "propose", "publication_reached", "roll_back",
]

logger = logging.getLogger("consortium.publishing")

_MAX_VERSION = 2**31 - 1  # the column is a 32-bit integer; larger numbers name no model


@dataclass(frozen=True)
class ProposalOutcome:
    """What a proposal led to.

    Attributes
    ----------
    proposal
        The recorded proposal.
    created
        False when it repeated the bank's latest proposal (nothing new recorded).
    agreed
        Full contributors whose latest proposal has this digest.
    required
        Full contributors: banks summed in every released round.
    model
        The published model, once published.
    """

    proposal: Proposal
    created: bool
    agreed: int
    required: int
    model: PublishedModel | None


def contributors(session: Session, run_id: str) -> list[str]:
    """Banks summed in every released round of the run (none if no round was released)."""
    released = select(RoundRow.id).where(RoundRow.run_id == run_id, RoundRow.state == RoundState.RELEASED.value)
    n_released = session.execute(select(func.count()).select_from(released.subquery())).scalar_one()
    if not n_released:
        return []
    rows = session.execute(
        select(Contribution.bank_id)
        .where(Contribution.round_id.in_(released))
        .group_by(Contribution.bank_id)
        .having(func.count() == n_released)
        .order_by(Contribution.bank_id)
    )
    return [bank_id for (bank_id,) in rows]


def publication_reached(agreed: int, eligible: int, min_banks: int) -> bool:
    """Whether ``agreed`` of ``eligible`` full contributors suffice to publish under ``min_banks``."""
    return agreed >= max(min_banks, MIN_BANKS) and 2 * agreed > eligible


def _latest_proposals(session: Session, run_id: str) -> dict[str, Proposal]:
    latest: dict[str, Proposal] = {}
    for row in session.execute(select(Proposal).where(Proposal.run_id == run_id).order_by(Proposal.id)).scalars():
        latest[row.bank_id] = row
    return latest


def _check_model_file(body: bytes) -> None:
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        message = f"a proposed model must be a JSON document: {exc}"
        raise Unprocessable(message, {"body": [message]}) from None
    if not isinstance(document, dict):
        message = "a proposed model must be a JSON object"
        raise Unprocessable(message, {"body": [message]})


def propose(session: Session, *, run_id: str, bank: Bank, body: bytes, signature: str | None) -> ProposalOutcome:
    """Record a bank's proposed model for a run and publish it once a quorum of full contributors agrees.

    Raises
    ------
    NotFound, Forbidden, BadRequest, Conflict, Unprocessable
        With nothing stored.
    """
    from crypto.signing import SignatureError, proposal_message, verify

    run = get_run(session, run_id)
    if bank.bank_id not in run.participants:
        raise Forbidden(f"bank {bank.bank_id!r} is not a participant of run {run_id!r}")
    if not bank.signing_key:  # pragma: no cover - participants have keys
        raise Conflict(f"bank {bank.bank_id!r} has not registered its signing key")
    try:
        verify(bank.signing_key, proposal_message(run_id, bank.bank_id, body), signature)
    except SignatureError as exc:
        raise BadRequest(f"proposal refused: {exc}", {"X-Fedfraud-Signature": [str(exc)]}) from None
    if run.state != RunState.OPEN.value:
        raise Conflict(f"run {run_id!r} is {run.state}; it takes no more proposals", state=run.state)
    _check_model_file(body)

    store = blob_store()
    with write_lock():
        session.refresh(run, with_for_update=True)
        if run.state != RunState.OPEN.value:
            raise Conflict(f"run {run_id!r} is {run.state}; it takes no more proposals", state=run.state)
        digest = store.put(body)
        latest = _latest_proposals(session, run_id)
        previous = latest.get(bank.bank_id)
        created = previous is None or previous.model_digest != digest
        if created:
            proposal = Proposal(
                run_id=run_id,
                bank_id=bank.bank_id,
                model_digest=digest,
                model_size=len(body),
                signature=signature or "",
                received_at=now(),
            )
            session.add(proposal)
            session.flush()
            latest[bank.bank_id] = proposal
            record(session, "proposal.received", bank_id=bank.bank_id, run_id=run_id,
                   details={"model_sha256": digest, "model_size": len(body), "signature": signature or ""})
        else:
            assert previous is not None
            proposal = previous
        required = contributors(session, run_id)
        agreeing = [bank_id for bank_id in required if bank_id in latest and latest[bank_id].model_digest == digest]
        if needs_assessment(run):
            agreeing, document = _assessed(session, run_id, agreeing, digest)
        else:  # nothing to beat: the banks' assessment is kept for the record if a quorum wrote it
            assessed, chosen = _assessed(session, run_id, agreeing, digest)
            document = chosen if len(assessed) >= run.min_banks else None
        agreed = len(agreeing)
        model = None
        if publication_reached(agreed, len(required), run.min_banks):
            model = _publish(session, run, digest, len(body), agreeing, document)
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            raise Conflict(f"run {run_id!r} was completed by a concurrent proposal") from None
    logger.info(
        "model proposed",
        extra={"run_id": run_id, "bank_id": bank.bank_id, "digest": digest[:16], "agreed": agreed, "required": len(required)},
    )
    if model is not None:
        logger.info("model published", extra={"run_id": run_id, "version": model.version, "digest": digest[:16]})
    return ProposalOutcome(proposal=proposal, created=created, agreed=agreed, required=len(required), model=model)


def needs_assessment(run: Run) -> bool:
    """Whether the run's model is gated: there is a current model to compare with, and the window
    has validation days to compare on. (The first model of a family has nothing to beat.)"""
    return (run.baseline_version is not None and bool(run.window)
            and int((run.window or {}).get("validation_days", 0)) > 0)


def _assessed(session: Session, run_id: str, agreeing: list[str], digest: str) -> tuple[list[str], str | None]:
    """The agreeing banks whose signed assessment of this digest is the one most of them wrote."""
    rows = {row.bank_id: row.document for row in session.execute(
        select(Assessment).where(Assessment.run_id == run_id)).scalars()}
    documents = [rows[bank] for bank in agreeing if bank in rows
                 and AssessmentDocument.from_bytes(rows[bank].encode()).model_digest == digest]
    if not documents:
        return [], None
    chosen = max(set(documents), key=documents.count)
    return [bank for bank in agreeing if rows.get(bank) == chosen], chosen


def post_assessment(session: Session, *, run_id: str, bank: Bank, body: bytes, signature: str | None) -> Assessment:
    """Record a bank's signed assessment of the run's candidate (before its proposal).

    Raises
    ------
    Forbidden, BadRequest, Conflict, Unprocessable
        Not a participant, a bad signature, a closed run or a different second assessment, or a
        document that is malformed, inconsistent, or made against another baseline or tolerance.
    """
    from schemas.assessment import AssessmentError, assessment_message

    run = get_run(session, run_id)
    if bank.bank_id not in run.participants:
        raise Forbidden(f"bank {bank.bank_id!r} is not a participant of run {run_id!r}")
    try:
        assert bank.signing_key is not None
        verify_signature(bank.signing_key, assessment_message(run_id, bank.bank_id, body), signature)
    except SignatureFailure as exc:
        raise BadRequest(f"assessment refused: {exc}", {"X-Fedfraud-Signature": [str(exc)]}) from None
    try:
        document = AssessmentDocument.from_bytes(body)
    except AssessmentError as exc:
        raise Unprocessable(f"not an assessment: {exc}", {"body": [str(exc)]}) from None
    expected = (run_id, run.baseline_version, float(run.promotion_tolerance or 0.0))
    if (document.run_id, document.baseline_version, document.tolerance) != expected:
        message = (f"the assessment is for run {document.run_id!r}, baseline {document.baseline_version}, tolerance "
                   f"{document.tolerance}; this run compares with baseline {run.baseline_version} at tolerance "
                   f"{run.promotion_tolerance}")
        raise Unprocessable(message, {"body": [message]})
    with write_lock():
        session.refresh(run, with_for_update=True)
        if run.state != RunState.OPEN.value:
            session.rollback()
            raise Conflict(f"run {run_id!r} is {run.state}; it takes no more assessments", state=run.state)
        existing = session.execute(select(Assessment).where(
            Assessment.run_id == run_id, Assessment.bank_id == bank.bank_id)).scalar_one_or_none()
        if existing is not None:
            session.rollback()
            if existing.document.encode() == body:
                return existing
            raise Conflict(f"bank {bank.bank_id!r} assessed run {run_id!r} already, differently")
        row = Assessment(run_id=run_id, bank_id=bank.bank_id, document=body.decode(), signature=signature or "",
                         posted_at=now())
        session.add(row)
        record(session, "assessment.posted", bank_id=bank.bank_id, run_id=run_id,
               details={"document": json.loads(body), "signature": signature or ""})
        session.commit()
    logger.info("assessment posted", extra={"run_id": run_id, "bank_id": bank.bank_id, "promote": document.promote})
    return row


def current_model(session: Session, family: str) -> CurrentModel | None:
    """The model ``family`` serves now, if any."""
    return session.get(CurrentModel, family)


def make_current(session: Session, model: PublishedModel, reason: str) -> CurrentModel:
    """Point ``model``'s family at it (promotion, or an operator's rollback); no commit."""
    record(session, "model.current", run_id=model.run_id, model_version=model.version,
           details={"family": model.family, "reason": reason})
    current = session.get(CurrentModel, model.family)
    if current is None:
        current = CurrentModel(family=model.family, version=model.version, since=now(), reason=reason)
        session.add(current)
    else:
        current.version, current.since, current.reason = model.version, now(), reason
    return current


def roll_back(session: Session, model: PublishedModel, *, reason: str) -> CurrentModel:
    """An operator makes an earlier promoted version current again.

    Raises
    ------
    Conflict
        The version was rejected by the gate: the operator cannot promote it alone.
    """
    if model.status != "promoted":
        raise Conflict(f"model version {model.version} was {model.status} by the banks' assessments; only a "
                       "version that was promoted can be made current")
    with write_lock():
        current = make_current(session, model, f"set by the operator: {reason}" if reason else "set by the operator")
        session.commit()
    logger.info("current model set", extra={"family": model.family, "version": model.version})
    return current


def _publish(session: Session, run: Run, digest: str, size: int, banks: list[str],
             assessment: str | None = None) -> PublishedModel:
    moment = now()
    document = None if assessment is None else AssessmentDocument.from_bytes(assessment.encode())
    promoted = document is None or document.promote
    model = PublishedModel(
        run_id=run.run_id,
        model_digest=digest,
        model_size=size,
        family=run.model,
        banks=list(banks),
        created_at=moment,
        status="promoted" if promoted else "rejected",
        assessment=assessment,
        baseline_version=run.baseline_version,
    )
    session.add(model)
    session.flush()
    record(session, "model.published", run_id=run.run_id, model_version=model.version,
           details={"family": run.model, "model_sha256": digest, "model_size": size, "status": model.status,
                    "banks": list(banks), "baseline_version": run.baseline_version,
                    "assessment": None if assessment is None else json.loads(assessment)})
    if promoted:
        make_current(session, model, f"promoted by run {run.run_id}")
        run.state = RunState.COMPLETED.value
    else:
        assert document is not None and document.baseline is not None
        run.state = RunState.REJECTED.value
        run.failure_reason = (
            f"candidate AUC {document.candidate['auc']:.4f} is worse than the current model's "
            f"{document.baseline['auc']:.4f} (version {document.baseline_version}) by more than {document.tolerance}; "
            "the current model stays"
        )
    run.finished_at = moment
    record(session, f"run.{run.state}", run_id=run.run_id, model_version=model.version,
           details={"reason": run.failure_reason or f"model {model.version} promoted"})
    session.flush()
    return model


def list_models(session: Session) -> list[PublishedModel]:
    """Published models, newest version first."""
    return list(session.execute(select(PublishedModel).order_by(PublishedModel.version.desc())).scalars())


def get_model(session: Session, version: int) -> PublishedModel:
    """Published model ``version``, or 404."""
    model = session.get(PublishedModel, version) if 0 < version <= _MAX_VERSION else None
    if model is None:
        raise NotFound(f"no published model version {version}")
    return model


def proposals_for(session: Session, model: PublishedModel) -> list[Proposal]:
    """The signed proposals of the banks that published ``model`` (their latest, of its digest)."""
    latest = _latest_proposals(session, model.run_id)
    return [latest[bank] for bank in model.banks if bank in latest and latest[bank].model_digest == model.model_digest]


def model_for_run(session: Session, run_id: str) -> PublishedModel | None:
    """The model a run published, if any."""
    return session.execute(select(PublishedModel).where(PublishedModel.run_id == run_id)).scalar_one_or_none()
