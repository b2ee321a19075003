"""Opening training runs and reading them back."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from consortium.ceremony import key_material
from consortium.errors import Conflict, Unprocessable
from consortium.extensions import now, write_lock
from consortium.ledger import record
from consortium.roster import roster_by_digest
from consortium.secure_sum import check_quorum
from consortium.storage.models import Bank, CurrentModel, Run, RunState
from crypto.roster import Roster
from schemas.run import MODEL_FAMILIES, RunWindow

__all__ = ["MODEL_FAMILIES", "cancel_run", "end_run", "list_runs", "open_run", "withdraw"]

logger = logging.getLogger("consortium.runs")



def _new_run_id(moment: Any) -> str:
    # Sortable by time, unique by the random suffix.
    return f"run-{moment:%Y%m%dt%H%M%S}-{secrets.token_hex(4)}"


def open_run(
    session: Session,
    *,
    model: str,
    params: dict[str, Any],
    min_banks: int,
    round_timeout_s: int,
    participants: Sequence[str] | None,
    window: RunWindow,
    run_timeout_s: int,
    promotion_tolerance: float,
) -> Run:
    """Open a training run.

    Parameters
    ----------
    model
        Model family, one of :data:`MODEL_FAMILIES`.
    params
        Algorithm parameters, validated for the family (``schemas/run.py``).
    min_banks
        Quorum of every round of the run.
    round_timeout_s
        Deadline of each round, from its opening.
    window
        The days every bank trains and validates on.
    run_timeout_s
        Deadline of the whole run, from now: an open run past it fails.
    promotion_tolerance
        The gate's tolerance: the model is promoted unless its pooled AUC is lower than the
        current model's (recorded now as the run's baseline) by more than this.
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
    baseline = _current_version(session, model)
    if baseline is not None and window.validation_days == 0:
        # The banks refuse such a run (their served model would be replaced unchecked); say it now.
        message = (f"the {model} family serves model {baseline}: a run that may replace it needs validation days "
                   "for the promotion gate")
        raise Unprocessable(message, {"window": [message]})
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
            window=window.to_json(),
            baseline_version=baseline,
            promotion_tolerance=promotion_tolerance,
            deadline=moment + timedelta(seconds=run_timeout_s),
            withdrawn={},
            state=RunState.OPEN.value,
            created_at=moment,
        )
        session.add(run)
        record(session, "run.opened", run_id=run.run_id,
               details={"model": model, "params": dict(params), "participants": chosen, "min_banks": min_banks,
                        "key_id": material.key_id, "window": window.to_json(), "baseline_version": baseline,
                        "promotion_tolerance": promotion_tolerance, "round_timeout_s": round_timeout_s,
                        "deadline": run.deadline.isoformat() + "Z" if run.deadline else None})
        session.commit()
    logger.info("run opened", extra={"run_id": run.run_id, "model": model, "participants": chosen})
    return run


def _current_version(session: Session, family: str) -> int | None:
    current = session.get(CurrentModel, family)
    return None if current is None else current.version


def _key_roster_members(session: Session, roster_digest: str) -> set[str]:
    """The banks of the roster the current key was made for (the banks only take part with their
    pinned roster's members; a run listing anyone else could never complete)."""
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


def end_run(session: Session, run: Run, state: RunState, reason: str) -> None:
    """Mark an open run failed or cancelled with ``reason`` (commits), and fail its open rounds
    (which wakes the banks waiting on them)."""
    run.state = state.value
    run.failure_reason = reason
    run.finished_at = now()
    record(session, f"run.{state.value}", run_id=run.run_id, details={"reason": reason})
    session.commit()
    logger.info("run ended", extra={"run_id": run.run_id, "state": state.value, "reason": reason[:200]})
    _settle_open_rounds(session, run)


def _settle_open_rounds(session: Session, run: Run) -> None:
    """Settle the run's open rounds after a change of the run (its end, a withdrawal): banks that
    wait on a round do not settle it themselves before its deadline."""
    from consortium.rounds import settle_run

    settle_run(session, run)


def cancel_run(session: Session, run: Run, *, reason: str) -> Run:
    """The operator stops an open run.

    Raises
    ------
    Conflict
        The run is not open.
    """
    with write_lock():
        session.refresh(run, with_for_update=True)
        if run.state != RunState.OPEN.value:
            session.rollback()
            raise Conflict(f"run {run.run_id!r} is {run.state}; only an open run can be cancelled", state=run.state)
        end_run(session, run, RunState.CANCELLED, f"cancelled by the operator: {reason}" if reason else
                "cancelled by the operator")
    return run


def withdraw(session: Session, run: Run, bank_id: str, *, reason: str) -> Run:
    """A participant bank cannot take part, and says why. The others go on without it; when too
    few banks are left for the quorum, the run fails with every withdrawn bank's reason.

    Raises
    ------
    Conflict
        The run is not open, or the bank withdrew already.
    """
    with write_lock():
        session.refresh(run, with_for_update=True)
        if run.state != RunState.OPEN.value:
            session.rollback()
            raise Conflict(f"run {run.run_id!r} is {run.state}", state=run.state)
        withdrawn = dict(run.withdrawn or {})
        if bank_id in withdrawn:
            session.rollback()
            raise Conflict(f"bank {bank_id!r} withdrew from run {run.run_id!r} already")
        withdrawn[bank_id] = reason
        run.withdrawn = withdrawn
        record(session, "run.withdrawal", bank_id=bank_id, run_id=run.run_id, details={"reason": reason})
        remaining = len(run.participants) - len(withdrawn)
        logger.info("bank withdrew from run", extra={"run_id": run.run_id, "bank_id": bank_id})
        if remaining < run.min_banks:
            reasons = "; ".join(f"{bank}: {why}" for bank, why in sorted(withdrawn.items()))
            end_run(session, run, RunState.FAILED,
                    f"{remaining} banks can take part, fewer than the quorum of {run.min_banks} ({reasons})")
        else:
            session.commit()
            _settle_open_rounds(session, run)  # a round that waited only for this bank is complete
    return run


def expire_runs(session: Session, moment: Any) -> int:
    """Fail every open run past its deadline; return how many."""
    expired = list(session.execute(
        select(Run).where(Run.state == RunState.OPEN.value, Run.deadline.is_not(None), Run.deadline <= moment)
    ).scalars())
    for run in expired:
        with write_lock():
            session.refresh(run, with_for_update=True)
            if run.state == RunState.OPEN.value:
                end_run(session, run, RunState.FAILED, f"the run's deadline ({run.deadline:%Y-%m-%d %H:%M} UTC) passed")
            else:
                session.rollback()
    return len(expired)
