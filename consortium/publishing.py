"""Proposals of finished models, and publication once every contributing bank agrees."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from consortium.errors import BadRequest, Conflict, Forbidden, NotFound, Unprocessable
from consortium.extensions import blob_store, now, write_lock
from consortium.rounds import get_run
from consortium.storage.models import (
    Bank,
    Contribution,
    Proposal,
    PublishedModel,
    Run,
    RunState,
)

__all__ = ["ProposalOutcome", "contributors", "get_model", "list_models", "propose"]

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
        Contributing banks whose latest proposal has this digest.
    required
        Contributing banks (all must agree).
    model
        The published model, once published.
    """

    proposal: Proposal
    created: bool
    agreed: int
    required: int
    model: PublishedModel | None


def contributors(session: Session, run_id: str) -> list[str]:
    """Banks that contributed to at least one round of the run."""
    rows = session.execute(
        select(Contribution.bank_id).where(Contribution.run_id == run_id).distinct().order_by(Contribution.bank_id)
    )
    return [bank_id for (bank_id,) in rows]


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
    """Record a bank's proposed model for a run and publish it if the contributors agree.

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
        else:
            assert previous is not None
            proposal = previous
        required = contributors(session, run_id)
        agreed = sum(1 for bank_id in required if bank_id in latest and latest[bank_id].model_digest == digest)
        model = None
        if required and agreed == len(required):
            model = _publish(session, run, digest, len(body), required)
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


def _publish(session: Session, run: Run, digest: str, size: int, banks: list[str]) -> PublishedModel:
    moment = now()
    model = PublishedModel(
        run_id=run.run_id,
        model_digest=digest,
        model_size=size,
        family=run.model,
        banks=list(banks),
        created_at=moment,
    )
    session.add(model)
    run.state = RunState.COMPLETED.value
    run.finished_at = moment
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


def model_for_run(session: Session, run_id: str) -> PublishedModel | None:
    """The model a run published, if any."""
    return session.execute(select(PublishedModel).where(PublishedModel.run_id == run_id)).scalar_one_or_none()
