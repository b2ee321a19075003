"""Opening training runs and reading them back."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from consortium.ceremony import key_material
from consortium.errors import Conflict, Unprocessable
from consortium.extensions import now, write_lock
from consortium.roster import roster_by_digest
from consortium.secure_sum import check_quorum
from consortium.storage.models import Bank, Run, RunState

__all__ = ["MODEL_FAMILIES", "list_runs", "open_run"]

logger = logging.getLogger("consortium.runs")

MODEL_FAMILIES = ("xgboost", "logreg")


def _new_run_id(moment: Any) -> str:
    # Sortable by time, unique by the random suffix, and never the reserved "ceremony".
    return f"run-{moment:%Y%m%dt%H%M%S}-{secrets.token_hex(4)}"


def open_run(
    session: Session,
    *,
    model: str,
    params: dict[str, Any],
    min_banks: int,
    round_timeout_s: int,
    participants: Sequence[str] | None,
) -> Run:
    """Open a training run.

    Parameters
    ----------
    model
        Model family, one of :data:`MODEL_FAMILIES`.
    params
        Algorithm parameters, passed to the banks as they are.
    min_banks
        Quorum of every round of the run.
    round_timeout_s
        Deadline of each round, from its opening.
    participants
        Bank ids; default every member of the current key's roster that registered its keys.

    Raises
    ------
    Conflict
        The key ceremony has not happened.
    Unprocessable
        Unknown participants, banks without keys, banks outside the key's roster, or fewer
        participants than the quorum.
    """
    try:
        check_quorum(min_banks)
    except ValueError as exc:
        raise Unprocessable(str(exc), {"min_banks": [str(exc)]}) from None
    material = key_material(session)
    if material is None:
        raise Conflict("no HE context has been published yet: the key ceremony comes before any run")
    members = _key_roster_members(session, material.roster_digest)
    with_keys = {
        bank.bank_id
        for bank in session.execute(select(Bank).where(Bank.signing_key.is_not(None))).scalars()
    }
    if participants is None:
        chosen = sorted(with_keys & members)
    else:
        chosen = sorted(set(participants))
        unknown = [bank_id for bank_id in chosen if session.get(Bank, bank_id) is None]
        if unknown:
            raise Unprocessable("unknown participants", {"participants": [f"no bank {b!r}" for b in unknown]})
        keyless = [bank_id for bank_id in chosen if bank_id not in with_keys]
        if keyless:
            raise Unprocessable(
                "participants without registered keys",
                {"participants": [f"bank {b!r} has not registered its keys" for b in keyless]},
            )
        outsiders = [bank_id for bank_id in chosen if bank_id not in members]
        if outsiders:
            raise Unprocessable(
                "participants outside the roster of the consortium's key",
                {"participants": [f"bank {b!r} is not a member of the roster the HE key was made for"
                                  for b in outsiders]},
            )
    if len(chosen) < min_banks:
        message = f"{len(chosen)} participants, fewer than the quorum of {min_banks}"
        raise Unprocessable(message, {"participants": [message]})
    with write_lock():
        moment = now()
        run = Run(
            run_id=_new_run_id(moment),
            model=model,
            params=dict(params),
            min_banks=min_banks,
            round_timeout_s=round_timeout_s,
            participants=chosen,
            key_id=material.key_id,
            state=RunState.OPEN.value,
            created_at=moment,
        )
        session.add(run)
        session.commit()
    logger.info("run opened", extra={"run_id": run.run_id, "model": model, "participants": chosen})
    return run


def _key_roster_members(session: Session, roster_digest: str) -> set[str]:
    """The banks of the roster the current key was made for (the banks only take part with their
    pinned roster's members; a run listing anyone else could never complete)."""
    from crypto.roster import Roster

    relayed = roster_by_digest(session, roster_digest)
    if relayed is None:  # a key published before rosters existed: no restriction to apply
        return {bank.bank_id for bank in session.execute(select(Bank)).scalars()}
    return set(Roster.from_bytes(relayed.document.encode("utf-8")).bank_ids)


def list_runs(session: Session, state: str | None = None) -> list[Run]:
    """Runs, newest first, optionally of one state."""
    query = select(Run).order_by(Run.created_at.desc(), Run.run_id.desc())
    if state is not None:
        query = query.where(Run.state == state)
    return list(session.execute(query).scalars())
