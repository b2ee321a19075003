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
from consortium.rounds import get_run
from consortium.secure_sum import MIN_BANKS, RoundState
from consortium.storage.models import (
    Bank,
    Contribution,
    Proposal,
    PublishedModel,
    RoundRow,
    Run,
    RunState,
)

__all__ = ["ProposalOutcome", "contributors", "get_model", "list_models", "proposals_for", "propose", "publication_reached"]

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
        else:
            assert previous is not None
            proposal = previous
        required = contributors(session, run_id)
        agreeing = [bank_id for bank_id in required if bank_id in latest and latest[bank_id].model_digest == digest]
        agreed = len(agreeing)
        model = None
        if publication_reached(agreed, len(required), run.min_banks):
            model = _publish(session, run, digest, len(body), agreeing)
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


def proposals_for(session: Session, model: PublishedModel) -> list[Proposal]:
    """The signed proposals of the banks that published ``model`` (their latest, of its digest)."""
    latest = _latest_proposals(session, model.run_id)
    return [latest[bank] for bank in model.banks if bank in latest and latest[bank].model_digest == model.model_digest]


def model_for_run(session: Session, run_id: str) -> PublishedModel | None:
    """The model a run published, if any."""
    return session.execute(select(PublishedModel).where(PublishedModel.run_id == run_id)).scalar_one_or_none()
