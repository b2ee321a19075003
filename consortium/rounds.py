"""Persisted secure-sum rounds: the rules of :mod:`consortium.secure_sum` over database rows and blobs.

Every state change is one committed transaction, and a contribution's row is committed only
after its ciphertext is durably in the blob store. A release that was interrupted (process
killed between storing the sum and marking the round) leaves the round open and complete, so
the next request touching it, or the sweep, simply does it again.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from flask import Flask, current_app
from sqlalchemy import bindparam, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from consortium.ceremony import key_material, key_material_by_id
from consortium.errors import BadRequest, Conflict, Forbidden, NotFound, Unprocessable
from consortium.extensions import (
    blob_store,
    context_guard,
    key_facts_cache,
    now,
    public_context,
    recent_sums,
    round_changed,
    summer,
    write_lock,
)
from consortium.ledger import record
from consortium.metrics import observe
from consortium.secure_sum import (
    Decision,
    InvalidContributionError,
    InvalidNoteError,
    NoteError,
    RoundState,
    check_contribution,
    check_note,
    decide,
    quorum_failure_reason,
)
from consortium.runs import expire_runs
from consortium.storage.database import db
from consortium.storage.models import (
    ID_PATTERN,
    ID_SEGMENT,
    Bank,
    Contribution,
    KeyMaterial,
    LedgerEntry,
    RoundNote,
    RoundRow,
    Run,
    RunState,
)
from schemas.privacy import RunPrivacy, has_gate, run_privacy
from schemas.ledger import parse_entry
from schemas.round_key import RoundKeyError, parse_round_key

__all__ = [
    "contribute",
    "contributors_of",
    "notes_of",
    "post_note",
    "find_round",
    "get_run",
    "purge_closed_payloads",
    "observed_round",
    "settle_round",
    "settled_round",
    "settle_run",
    "sweep_expired",
]

logger = logging.getLogger("consortium.rounds")

RUN_ID_PATTERN = ID_PATTERN
ROUND_KEY_PATTERN = re.compile(rf"^{ID_SEGMENT}(/{ID_SEGMENT})*\Z")
"""Round keys: '/'-separated id segments."""
_ATTEMPTS = 3  # concurrent first contributions race to open the round; the losers retry


def run_key(session: Session, run: Run) -> KeyMaterial | None:
    """The public context of the key ``run`` was opened under (the current one for older runs)."""
    return key_material(session) if run.key_id is None else key_material_by_id(session, run.key_id)


@dataclass(frozen=True)
class KeyFacts:
    """What a contribution needs of its run's key: its id and the digest of its public context."""

    key_id: str
    context_digest: str


def run_key_facts(session: Session, run: Run) -> KeyFacts | None:
    """:func:`run_key`'s id and context digest, read once per process for a run opened under a
    named key (a key generation's record never changes); asked at every contribution."""
    known: dict[str, KeyFacts] = key_facts_cache()
    if run.key_id is not None and run.key_id in known:
        return known[run.key_id]
    material = run_key(session, run)
    if material is None:
        return None
    facts = KeyFacts(key_id=material.key_id, context_digest=material.context_digest)
    if run.key_id is not None:
        known[run.key_id] = facts
    return facts


def get_run(session: Session, run_id: str) -> Run:
    """The run ``run_id``, or 404."""
    run = session.get(Run, run_id) if RUN_ID_PATTERN.match(run_id) else None
    if run is None:
        raise NotFound(f"no run {run_id!r}")
    return run


@dataclass(frozen=True)
class Signer:
    """A bank as its signed messages need it: its id and registered signing key (None before
    it registered one)."""

    bank_id: str
    signing_key: str | None


_SIGNER: Final = select(Bank.bank_id, Bank.signing_key).where(Bank.bank_id == bindparam("bank_id"))


def signer(session: Session, bank_id: str) -> Signer:
    """Bank ``bank_id``'s :class:`Signer` (two columns, no object: asked at every contribution
    and note), or 404."""
    row = session.connection().execute(_SIGNER, {"bank_id": bank_id}).first()
    if row is None:  # pragma: no cover - participants are enrolled banks
        raise NotFound(f"no bank {bank_id!r}")
    return Signer(bank_id=row[0], signing_key=row[1])


_PARTICIPANTS: Final = select(Run.participants).where(Run.run_id == bindparam("run_id"))


def run_participants(session: Session, run_id: str) -> list[str]:
    """The participants of run ``run_id`` (one column, no object: the requests of every round ask
    it to check who calls), or 404."""
    row = session.connection().execute(_PARTICIPANTS, {"run_id": run_id}).first() if RUN_ID_PATTERN.match(run_id) else None
    if row is None:
        raise NotFound(f"no run {run_id!r}")
    return list(row[0])


def settled_round(session: Session, run_id: str, round_key: str) -> RoundRow:
    """The round ``round_key`` of an existing run, released or failed if its time has come; or 404."""
    get_run(session, run_id)
    current = find_round(session, run_id, round_key) if ROUND_KEY_PATTERN.match(round_key) else None
    if current is None:
        raise NotFound(f"no round {round_key[:80]!r} in run {run_id!r}")
    return settle_round(session, current)


def observed_round(session: Session, run_id: str, round_key: str) -> RoundRow:
    """The round as stored, for a request waiting on it: read without locking, and settled (which
    takes the write lock) only once its deadline passed. Every other change that can release or
    fail a round (a contribution, a withdrawal, a cancelled run) settles it itself, so a waiter
    never needs to."""
    current = find_round(session, run_id, round_key) if ROUND_KEY_PATTERN.match(round_key) else None
    if current is None:
        raise NotFound(f"no round {round_key[:80]!r} in run {run_id!r}")
    if current.state == RoundState.OPEN.value and now() >= current.deadline:
        return settle_round(session, current)
    return current


@dataclass(frozen=True)
class RoundProgress:
    """What a request waiting on a round looks at: its state, deadline, and how many
    contributions and notes it holds."""

    state: str
    deadline: datetime
    contributions: int
    notes: int
    round_id: int
    aggregate_digest: str | None

    @property
    def due(self) -> bool:
        """Open past its deadline: to be settled before anyone is answered."""
        return self.state == RoundState.OPEN.value and now() >= self.deadline


_PROGRESS: Final = select(
    RoundRow.state, RoundRow.deadline, RoundRow.id, RoundRow.aggregate_digest,
    select(func.count()).where(Contribution.round_id == RoundRow.id).scalar_subquery(),
    select(func.count()).where(RoundNote.round_id == RoundRow.id).scalar_subquery(),
).where(RoundRow.run_id == bindparam("run_id"), RoundRow.round_key == bindparam("round_key"))


def round_progress(session: Session, run_id: str, round_key: str) -> RoundProgress | None:
    """The round's :class:`RoundProgress` in one light read (no objects loaded), or None if there
    is no such round. Waiting requests read it at every change: loading the round, its
    contributions and notes as objects each time was most of the aggregator's work."""
    if not ROUND_KEY_PATTERN.match(round_key):
        return None
    row = session.connection().execute(_PROGRESS, {"run_id": run_id, "round_key": round_key}).first()
    return None if row is None else RoundProgress(state=row[0], deadline=row[1], round_id=int(row[2]),
                                                  aggregate_digest=row[3], contributions=int(row[4]),
                                                  notes=int(row[5]))


def settled_state(session: Session, run_id: str, round_key: str,
                  progress: RoundProgress | None) -> tuple[str, int]:
    """The round's state and id from its ``progress`` as just read; when there was none (404) or
    its deadline passed, from :func:`settled_round` (which releases or fails it first)."""
    if progress is None or progress.due:
        current = settled_round(session, run_id, round_key)
        return current.state, current.id
    return progress.state, progress.round_id


def find_round(session: Session, run_id: str, round_key: str, *, lock: bool = False) -> RoundRow | None:
    """The round ``round_key`` of a run, optionally locked for update, freshly read."""
    query = select(RoundRow).where(RoundRow.run_id == run_id, RoundRow.round_key == round_key)
    if lock:
        query = query.with_for_update()
    return session.execute(query.execution_options(populate_existing=True)).scalar_one_or_none()


def _verify_contribution_signature(bank: Signer, run_id: str, round_key: str, payload: bytes, signature: str | None) -> None:
    from crypto.signing import SignatureError, contribution_message, verify

    if not bank.signing_key:
        raise Conflict(f"bank {bank.bank_id!r} has not registered its signing key")
    try:
        verify(bank.signing_key, contribution_message(run_id, round_key, bank.bank_id, payload), signature)
    except SignatureError as exc:
        raise BadRequest(f"contribution refused: {exc}", {"X-Fedfraud-Signature": [str(exc)]}) from None


def contribute(
    session: Session, *, run_id: str, round_key: str, bank_id: str, payload: bytes, signature: str | None
) -> tuple[RoundRow, int]:
    """Store one bank's signed ciphertext for a round, opening the round if it is the first.

    Parameters
    ----------
    session
        Database session.
    run_id, round_key, bank_id
        Where the payload goes and who sends it (the authenticated bank).
    payload
        The ciphertext payload.
    signature
        Base64 Ed25519 signature over the contribution message.

    Returns
    -------
    RoundRow, int
        The round after the contribution (released if it completed the round), and the index of
        the ``contribution.accepted`` entry in the ledger (for the bank's receipt).

    Raises
    ------
    NotFound, Forbidden, BadRequest, Conflict, Unprocessable
        With nothing stored.
    """
    run = get_run(session, run_id)
    if bank_id not in run.participants:
        raise Forbidden(f"bank {bank_id!r} is not a participant of run {run_id!r}")
    expected = expected_banks(run, round_key)
    if len(expected) < run.min_banks:
        message = f"round {round_key!r} leaves {len(expected)} banks, fewer than the run's quorum of {run.min_banks}"
        raise Unprocessable(message, {"round_key": [message]})
    if bank_id in (run.withdrawn or {}):
        raise Forbidden(f"bank {bank_id!r} withdrew from run {run_id!r}")
    if bank_id not in expected:
        raise Forbidden(f"round {round_key!r} leaves bank {bank_id!r} out (a restart without it)")
    bank = signer(session, bank_id)
    _verify_contribution_signature(bank, run_id, round_key, payload, signature)

    # A contribution that completes a large round takes the lease on its sum in the same commit,
    # so no other request or process starts that sum before the background one does.
    large = summer().is_large(len(payload) * len(expected))
    seen = round_progress(session, run_id, round_key)
    if seen is not None and seen.due:
        existing = find_round(session, run_id, round_key)
        if existing is not None:
            settle_round(session, existing)  # too late: the round closes before this is looked at
    # The signed payload is written (and fsync'ed) before the write lock, not under it: every
    # other bank's contribution to the round waited for it. Blobs are named by their digest, so
    # a twin written meanwhile is the same file; a refused payload's file is removed under the
    # lock, where the contribution that keeps a payload is stored too (_store_contribution).
    digest = blob_store().put(payload)
    try:
        with write_lock():
            for attempt in range(_ATTEMPTS):
                try:
                    current, entry, complete = _store_contribution(session, run, round_key, bank, payload, digest,
                                                                   signature or "", large=large)
                    break
                except IntegrityError:
                    session.rollback()
                    if attempt == _ATTEMPTS - 1:
                        raise
    except BaseException:
        session.rollback()
        _remove_refused_payload(session, run_id, round_key, digest)
        raise
    if complete and large:
        # Off the request: the bank's answer does not wait for a sum of seconds (with ?wait it
        # waits for the release like every other bank). The round stays open until it is summed.
        _hand_off(run_id, round_key)
    elif complete:
        settle_round(session, current)
    # A round still waiting for banks has nothing to settle: its deadline is the sweep's (and
    # no contribution is taken after it).
    return current, entry


def _remove_refused_payload(session: Session, run_id: str, round_key: str, digest: str) -> None:
    """Remove a refused contribution's payload file, unless a stored contribution keeps the same
    bytes (the same bank's retry, accepted). Under the write lock and the round's row lock, which
    a contribution holds from the moment it finds the file until its commit."""
    try:
        with write_lock():
            find_round(session, run_id, round_key, lock=True)
            if not _digest_referenced(session, digest):
                blob_store().delete(digest)
            session.commit()
    except Exception:  # an orphan file is harmless; the refusal is what the bank must hear
        session.rollback()
        logger.exception("could not remove a refused contribution's payload", extra={"digest": digest[:16]})


def _settle_in_background(app: Flask, run_id: str, round_key: str) -> None:
    with app.app_context():
        current = find_round(db.session, run_id, round_key)
        if current is not None:
            settle_round(db.session, current, leased=True)


def expected_banks(run: Run, round_key: str) -> frozenset[str]:
    """The banks a round of ``run`` expects: the run's participants but those its key leaves out
    and those that withdrew from the run.

    Raises
    ------
    Unprocessable
        The key leaves out banks the run does not have.
    """
    try:
        return parse_round_key(round_key).expected(run.participants) - set(run.withdrawn or {})
    except RoundKeyError as exc:
        raise Unprocessable(str(exc), {"round_key": [str(exc)]}) from None


def _store_contribution(
    session: Session, run: Run, round_key: str, bank: Signer, payload: bytes, digest: str, signature: str, *,
    large: bool,
) -> tuple[RoundRow, int, bool]:
    """Store the contribution (see :func:`contribute`; its payload stored already as blob
    ``digest``); if with it every bank the round expects has contributed and the round is
    ``large``, take the lease on the round's sum in the same commit. Returns the round, the
    ledger entry's index and whether the round is complete. The caller holds the write lock,
    and removes the blob if this raises."""
    _reread_run_state(session, run)
    if run.state != RunState.OPEN.value:
        raise Conflict(f"run {run.run_id!r} is {run.state}; it takes no more contributions", state=run.state)
    current = find_round(session, run.run_id, round_key, lock=True)
    # The round's contributors, read once under its lock: this bank's replay, and whether this
    # contribution completes the round (nobody else adds one before the commit).
    contributors = set() if current is None else set(contributors_of(session, current.id))
    if current is not None:
        if current.state != RoundState.OPEN.value:
            raise Conflict(
                f"round {round_key!r} of run {run.run_id!r} is {current.state}; it takes no more contributions",
                state=current.state,
            )
        if now() >= current.deadline:  # still open only while its release is being made
            raise Conflict(f"round {round_key!r} of run {run.run_id!r} passed its deadline; it takes no more "
                           "contributions", state=current.state)
        if bank.bank_id in contributors:
            raise Conflict(f"bank {bank.bank_id!r} already contributed to round {round_key!r}", state=current.state)

    material = run_key_facts(session, run)
    if material is None:  # pragma: no cover - a run cannot be opened before the ceremony
        raise Conflict("no HE context has been published yet")
    context = public_context(material.context_digest)
    try:
        header = check_contribution(
            context, payload, round_key=round_key, n_values=None if current is None else current.n_values
        )
    except InvalidContributionError as exc:
        raise Unprocessable(str(exc), {"body": [str(exc)]}) from None

    store = blob_store()
    if not store.exists(digest):  # removed by the clean-up of a refused twin (the same bank's retry)
        store.put(payload)
    if current is None:
        opened = now()
        current = RoundRow(
            run_id=run.run_id,
            round_key=round_key,
            n_values=header.n_values,
            state=RoundState.OPEN.value,
            opened_at=opened,
            deadline=opened + timedelta(seconds=run.round_timeout_s),
            dropped=[],
        )
        session.add(current)
        session.flush()
    privacy = run_setting(run)
    if privacy is not None:
        _record_privacy_spent(session, run, bank, round_key, privacy)
    # A row, not an object: nothing in this request reads the contribution back.
    session.connection().execute(_INSERT_CONTRIBUTION, {
        "run_id": run.run_id, "round_id": current.id, "bank_id": bank.bank_id, "payload_digest": digest,
        "payload_size": len(payload), "signature": signature, "received_at": now(), "payload_kept": True})
    complete = expected_banks(run, round_key) <= contributors | {bank.bank_id}
    if complete and large:
        current.summing_until = now() + timedelta(seconds=SUM_LEASE_S)
    entry = record(session, "contribution.accepted", bank_id=bank.bank_id, run_id=run.run_id,
                   details={"round_key": round_key, "payload_sha256": digest, "payload_size": len(payload),
                            "n_values": header.n_values, "key_id": material.key_id, "signature": signature})
    _commit_keeping_loaded(session)
    if (metrics := observe()) is not None:
        metrics.contribution("accepted", len(payload))
    logger.info(
        "contribution stored",
        extra={"run_id": run.run_id, "round_key": round_key, "bank_id": bank.bank_id, "digest": digest[:16], "size": len(payload)},
    )
    return current, entry, complete


_INSERT_CONTRIBUTION: Final = insert(Contribution.metadata.tables[Contribution.__tablename__])  # Core: a row, no object
_RUN_STATE: Final = select(Run.state, Run.withdrawn).where(Run.run_id == bindparam("run_id"))


def _reread_run_state(session: Session, run: Run) -> None:
    """Read afresh what can change while a run is open (cancelled or failed, a bank withdrew),
    under the caller's lock; the rest of a run never changes once it is open."""
    state, withdrawn = session.connection().execute(_RUN_STATE, {"run_id": run.run_id}).one()
    set_committed_value(run, "state", state)
    set_committed_value(run, "withdrawn", withdrawn)


def _commit_keeping_loaded(session: Session) -> None:
    """Commit, keeping what the session read and wrote loaded: it is what was just committed, under
    the write lock and the round's row lock. Reloading the run, the bank and the round for the log
    line and the bank's answer cost three queries a contribution and two a release; whoever acts
    on a round next (:func:`settle_round`) locks and reads it afresh."""
    session.expire_on_commit = False
    try:
        session.commit()
    finally:
        session.expire_on_commit = True


def _record_privacy_spent(session: Session, run: Run, bank: Signer, round_key: str, privacy: RunPrivacy) -> None:
    """A ``privacy.spent`` entry at the bank's first noisy contribution to the run, and again at its
    first of each epoch the run starts over in (its sums are released again, with fresh noise)."""
    epoch = parse_round_key(round_key).epoch
    earlier = select(Contribution.id).where(Contribution.run_id == run.run_id, Contribution.bank_id == bank.bank_id)
    if epoch > 0:  # an epoch's keys start "e{epoch}/" or "e{epoch}-x...": no algorithm key starts so
        earlier = earlier.join(RoundRow, RoundRow.id == Contribution.round_id).where(
            or_(RoundRow.round_key.like(f"e{epoch}/%"), RoundRow.round_key.like(f"e{epoch}-%")))
    if session.execute(earlier.limit(1)).first() is None:
        details = {**privacy.to_json(), "round_key": round_key, **({"epoch": epoch} if epoch else {})}
        record(session, "privacy.spent", bank_id=bank.bank_id, run_id=run.run_id, details=details)


def run_setting(run: Run) -> RunPrivacy | None:
    """The run's differential-privacy setting (None for a run without), as its banks compute it."""
    return run_privacy(run.model, dict(run.params or {}), gate=has_gate(run.window))


def contributed(session: Session, run_id: str, round_key: str, bank_id: str) -> bool:
    """Whether ``bank_id`` has a stored contribution to the round."""
    return session.execute(
        select(Contribution.id).join(RoundRow, RoundRow.id == Contribution.round_id).where(
            RoundRow.run_id == run_id, RoundRow.round_key == round_key, Contribution.bank_id == bank_id).limit(1)
    ).first() is not None


def privacy_entry(session: Session, run: Run, bank_id: str, round_key: str) -> int | None:
    """The ledger index of the ``privacy.spent`` entry recording ``bank_id``'s spend in the epoch
    of ``round_key`` (None when the run is not private, or nothing was recorded). Every
    contribution to a private run is answered with that entry's receipt, so that the bank checks
    the spend recorded in its name is the one it made (``LedgerWatch.keep``)."""
    if run_setting(run) is None:
        return None
    epoch = parse_round_key(round_key).epoch
    for seq, body in session.execute(
            select(LedgerEntry.seq, LedgerEntry.body).where(
                LedgerEntry.event == "privacy.spent", LedgerEntry.bank_id == bank_id,
                LedgerEntry.run_id == run.run_id).order_by(LedgerEntry.seq)):
        if (parse_entry(body).get("details") or {}).get("epoch", 0) == epoch:
            return int(seq)
    return None


_CONTRIBUTORS: Final = (select(Contribution.bank_id).where(Contribution.round_id == bindparam("round_id"))
                        .order_by(Contribution.bank_id))


def contributors_of(session: Session, round_id: int) -> list[str]:
    """The banks that contributed to a round, by bank id: one column read, no objects (asked at
    every contribution, note and long-poll answer)."""
    return list(session.connection().execute(_CONTRIBUTORS, {"round_id": round_id}).scalars())


def _digest_referenced(session: Session, digest: str) -> bool:
    count = session.execute(
        select(func.count()).select_from(Contribution).where(
            Contribution.payload_digest == digest, Contribution.payload_kept.is_(True)
        )
    ).scalar_one()
    return bool(count)


def settle_round(session: Session, current: RoundRow, *, at: datetime | None = None, leased: bool = False) -> RoundRow:
    """Release or fail a round if its time has come; otherwise leave it open.

    The rule is :func:`consortium.secure_sum.decide`: released once every participant contributed,
    or at its deadline with a quorum; at its deadline without a quorum it fails alone (a bank that
    opened a round nobody joined cannot fail the others' run). A round of a run that is no longer
    open is failed. Safe to call repeatedly and concurrently.

    A small round is summed and marked in one locked transaction. A large one (see
    :class:`consortium.aggregation.Summer`) is never summed in a request: whoever finds it due
    takes a lease on its sum (in the database, so that no other request or process starts the
    same sum) and hands it to the process's background thread, which sums it outside the write
    lock and the round's row lock. A lease left by a process that died or failed runs out after
    ``SUM_LEASE_S``, and the sweep hands the round on again. ``leased``: the caller is the
    background release, which holds the lease.
    """
    if current.state != RoundState.OPEN.value:
        return current
    moment = at or now()
    large: _SumPlan | None = None
    with write_lock():
        locked = find_round(session, current.run_id, current.round_key, lock=True)
        if locked is None or locked.state != RoundState.OPEN.value:
            session.commit()
            return locked or current
        run, decision, contributed, participants = _judge(session, locked, moment)
        if run.state != RunState.OPEN.value:
            _fail(session, locked, run, f"run {run.run_id!r} is {run.state}")
        elif decision is Decision.FAIL:
            _fail(session, locked, run, quorum_failure_reason(len(contributed), len(participants), run.min_banks))
        elif decision is not Decision.RELEASE:
            if leased:  # the round is no longer complete (a bank withdrew): nobody is summing it
                locked.summing_until = None
            session.commit()  # end the locking transaction
            return locked
        elif not summer().is_large((plan := _sum_plan(session, locked, participants - contributed)).total_bytes):
            _mark_released(session, locked, plan, *_make_sum(plan))
        elif not leased and locked.summing_until is not None and now() < locked.summing_until:
            session.commit()  # being summed by another request or process
            return locked
        else:
            locked.summing_until = now() + timedelta(seconds=SUM_LEASE_S)
            session.commit()
            large = plan
    if large is not None and not leased:
        _hand_off(locked.run_id, locked.round_key)
        return locked
    if large is not None:  # the background release: summed outside the lock
        return _release_large(session, locked, large, moment)
    purge_closed_payloads(session, round_id=locked.id)
    return locked


SUM_LEASE_S: Final = 120
"""How long a large round's sum may take before the sweep hands it on again (50 banks' 6 MiB
contributions take about a second)."""


def _judge(session: Session, locked: RoundRow, moment: datetime) -> tuple[Run, Decision, set[str], set[str]]:
    """The locked round's run (freshly read), what :func:`decide` says of it, and the banks that
    contributed and that the round expects (one column read: this runs at every contribution)."""
    run = locked.run
    _reread_run_state(session, run)
    contributed = set(contributors_of(session, locked.id))
    participants = set(expected_banks(run, locked.round_key))
    decision = decide(contributed=contributed, participants=participants, min_banks=run.min_banks,
                      past_deadline=moment >= locked.deadline)
    return run, decision, contributed, participants


def _hand_off(run_id: str, round_key: str) -> None:
    """Give a leased round's release to the app's background thread."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    summer().in_background(lambda: _settle_in_background(app, run_id, round_key))


def _release_large(session: Session, current: RoundRow, plan: _SumPlan, moment: datetime) -> RoundRow:
    """Sum a leased round without holding it, then mark it released if it is still open, still
    due and with the same contributions; settle it afresh if anything changed meanwhile (a bank
    withdrew, the run ended)."""
    run_id, round_key = current.run_id, current.round_key
    digest, size = _make_sum(plan)
    with write_lock():
        locked = find_round(session, run_id, round_key, lock=True)
        if locked is not None and locked.state == RoundState.OPEN.value:
            run, decision, contributed, participants = _judge(session, locked, moment)
            if (run.state == RunState.OPEN.value and decision is Decision.RELEASE
                    and _sum_plan(session, locked, participants - contributed) == plan):
                _mark_released(session, locked, plan, digest, size)
                purge_closed_payloads(session, round_id=locked.id)
                return locked
        served = session.execute(select(RoundRow.id).where(RoundRow.aggregate_digest == digest).limit(1)).first()
        session.commit()
    if served is None:
        blob_store().delete(digest)
    if locked is None or locked.state != RoundState.OPEN.value:  # pragma: no cover - closed by another meanwhile
        return locked or current
    return settle_round(session, locked, leased=True)


@dataclass(frozen=True)
class _SumPlan:
    """What a release sums: the round, its contributions in summing order (bank, payload digest
    and size), its key's public context, and the banks it goes without."""

    round_id: int
    n_values: int
    contributions: tuple[tuple[str, str, int], ...]
    context_digest: str
    dropped: frozenset[str]

    @property
    def total_bytes(self) -> int:
        return sum(size for _, _, size in self.contributions)


_ADDENDS: Final = (select(Contribution.bank_id, Contribution.payload_digest, Contribution.payload_size)
                   .where(Contribution.round_id == bindparam("round_id")).order_by(Contribution.bank_id))


def _sum_plan(session: Session, current: RoundRow, dropped: set[str] | frozenset[str]) -> _SumPlan:
    material = run_key_facts(session, current.run)
    assert material is not None  # rounds exist only after the ceremony
    addends = session.connection().execute(_ADDENDS, {"round_id": current.id}).all()
    return _SumPlan(round_id=current.id, n_values=current.n_values,
                    contributions=tuple((bank_id, digest, int(size)) for bank_id, digest, size in addends),
                    context_digest=material.context_digest, dropped=frozenset(dropped))


def _make_sum(plan: _SumPlan) -> tuple[str, int]:
    """Sum the plan's contributions (by the app's :class:`consortium.aggregation.Summer`) and store
    the sum; its digest and size."""
    digests = [digest for _, digest, _ in plan.contributions]
    started = time.perf_counter()
    total, pieces = summer().total(public_context(plan.context_digest), plan.context_digest, digests,
                                   n_values=plan.n_values, total_bytes=plan.total_bytes,
                                   guard=context_guard())
    digest = blob_store().put(total)
    recent_sums().keep(digest, total)  # every bank asks for it next
    logger.info("round summed", extra={"round_id": plan.round_id, "addends": len(digests), "pieces": pieces,
                                       "seconds": round(time.perf_counter() - started, 3)})
    return digest, len(total)


def _mark_released(session: Session, current: RoundRow, plan: _SumPlan, digest: str, size: int) -> None:
    current.state = RoundState.RELEASED.value
    current.aggregate_digest = digest
    current.aggregate_size = size
    current.n_addends = len(plan.contributions)
    current.dropped = sorted(plan.dropped)
    current.summing_until = None
    current.closed_at = closed = now()
    record(session, "round.released", run_id=current.run_id,
           details={"round_key": current.round_key, "aggregate_sha256": digest, "aggregate_size": size,
                    "contributions": [{"bank_id": bank_id, "payload_sha256": payload}
                                      for bank_id, payload, _ in plan.contributions],
                    "dropped": sorted(plan.dropped)})
    _commit_keeping_loaded(session)
    round_changed()
    if (metrics := observe()) is not None:
        metrics.round_closed("released", current.opened_at, closed)  # kept loaded by the commit
    logger.info(
        "round released",
        extra={"run_id": current.run_id, "round_key": current.round_key, "n_addends": len(plan.contributions),
               "dropped": sorted(plan.dropped)},
    )


def _fail(session: Session, current: RoundRow, run: Run, reason: str) -> None:
    contributed = set(contributors_of(session, current.id))
    current.state = RoundState.FAILED.value
    current.failure_reason = reason
    # Banks the round expected and did not get; a bank left out or withdrawn did not drop out.
    current.dropped = sorted(expected_banks(run, current.round_key) - contributed)
    current.closed_at = closed = now()
    opened = current.opened_at  # read before the commit expires it
    record(session, "round.failed", run_id=run.run_id,
           details={"round_key": current.round_key, "reason": reason, "dropped": current.dropped})
    session.commit()
    round_changed()
    if (metrics := observe()) is not None:
        metrics.round_closed("failed", opened, closed)
    logger.warning(
        "round failed",
        extra={"run_id": run.run_id, "round_key": current.round_key, "reason": reason, "dropped": current.dropped},
    )


def post_note(session: Session, *, run_id: str, round_key: str, bank: Signer, note: bytes, signature: str | None) -> RoundNote:
    """Keep a summed bank's signed note to a released round (once per bank).

    Raises
    ------
    NotFound, BadRequest, Conflict, Unprocessable
        With nothing stored.
    """
    from crypto.signing import SignatureError, note_message, verify

    state, round_id = settled_state(session, run_id, round_key, round_progress(session, run_id, round_key))
    if not bank.signing_key:  # pragma: no cover - participants have keys
        raise Conflict(f"bank {bank.bank_id!r} has not registered its signing key")
    try:
        verify(bank.signing_key, note_message(run_id, round_key, bank.bank_id, note), signature)
    except SignatureError as exc:
        raise BadRequest(f"note refused: {exc}", {"X-Fedfraud-Signature": [str(exc)]}) from None
    with write_lock():
        summed = set(contributors_of(session, round_id))
        posted = {row.bank_id for row in notes_of(session, round_id)}
        try:
            check_note(note, bank=bank.bank_id, round_key=round_key, state=state, summed=summed, posted=posted)
        except InvalidNoteError as exc:
            raise Unprocessable(str(exc), {"body": [str(exc)]}) from None
        except NoteError as exc:
            raise Conflict(str(exc), state=state) from None
        row = RoundNote(round_id=round_id, bank_id=bank.bank_id, note=base64.b64encode(note).decode("ascii"),
                        signature=signature or "", posted_at=now())
        session.add(row)
        try:
            _commit_keeping_loaded(session)  # the answer shows the row as committed, without reading it back
        except IntegrityError:
            session.rollback()
            raise Conflict(f"bank {bank.bank_id!r} already posted its note to round {round_key!r}") from None
    if len(posted) + 1 >= len(summed):  # the last note: the banks waiting for all of them can go on
        round_changed()
    return row


_NOTES: Final = (select(RoundNote.bank_id, RoundNote.note, RoundNote.signature)
                 .where(RoundNote.round_id == bindparam("round_id")).order_by(RoundNote.bank_id))


def notes_of(session: Session, round_id: int) -> list[Any]:
    """The notes posted to a round, by bank id: rows with ``bank_id``, ``note`` (base64) and
    ``signature``, read as columns (every bank waiting on the round asks for them)."""
    return list(session.connection().execute(_NOTES, {"round_id": round_id}).all())


def purge_closed_payloads(session: Session, *, round_id: int | None = None, app: Flask | None = None) -> int:
    """Delete the individual ciphertexts of closed rounds (their digests and signatures stay).

    Parameters
    ----------
    session
        Database session.
    round_id
        Only this round; all closed rounds when ``None`` (the sweep's crash recovery).

    Returns
    -------
    int
        How many payload files were deleted.
    """
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    if app.config["KEEP_CONTRIBUTION_BLOBS"]:
        return 0
    query = (
        select(Contribution.id, Contribution.payload_digest)
        .join(RoundRow, Contribution.round_id == RoundRow.id)
        .where(Contribution.payload_kept.is_(True), RoundRow.state != RoundState.OPEN.value)
    )
    if round_id is not None:
        query = query.where(Contribution.round_id == round_id)
    rows = session.execute(query).all()
    if not rows:
        return 0
    batch = {row_id for row_id, _ in rows}
    store = blob_store(app)
    deleted = 0
    # Files first, then the flags: a crash in between leaves flags that a later purge redoes.
    digests = sorted({digest for _, digest in rows})
    still_needed = set(session.execute(
        select(Contribution.payload_digest).where(
            Contribution.payload_digest.in_(digests),
            Contribution.payload_kept.is_(True),
            Contribution.id.not_in(batch),
        )
    ).scalars())
    for digest in digests:
        if digest not in still_needed:
            deleted += int(store.delete(digest))
    session.execute(update(Contribution).where(Contribution.id.in_(batch)).values(payload_kept=False))
    _commit_keeping_loaded(session)  # the round just released is answered next, as loaded
    return deleted


def settle_run(session: Session, run: Run) -> Run:
    """Fail the run if its deadline passed; settle its open rounds whose deadline passed (or
    that are complete)."""
    open_rounds = session.execute(
        select(RoundRow).where(RoundRow.run_id == run.run_id, RoundRow.state == RoundState.OPEN.value)
    ).scalars()
    for current in list(open_rounds):
        settle_round(session, current)
    session.refresh(run)
    if run.state == RunState.OPEN.value and run.deadline is not None and now() >= run.deadline:
        expire_runs(session, now())
        session.refresh(run)
    return run


def sweep_expired(app: Flask) -> int:
    """Close every open round past its deadline, and hand on the sums whose lease ran out; return
    how many rounds were closed.

    Run periodically by ``serve``'s scheduler; also removes payload files of closed rounds that
    a crash left behind.
    """
    closed = 0
    with app.app_context():
        session = db.session
        moment = now(app)
        # Past their deadline, or large rounds whose sum's lease ran out (the process summing them
        # died, or the sum failed): handed on again.
        expired = list(
            session.execute(
                select(RoundRow).where(RoundRow.state == RoundState.OPEN.value,
                                       or_(RoundRow.deadline <= moment, RoundRow.summing_until <= moment))
            ).scalars()
        )
        for current in expired:
            try:
                settled = settle_round(session, current, at=moment)
            except Exception:  # one broken round must not stop the sweep of the others
                session.rollback()
                logger.exception("sweep could not close round", extra={"round_key": current.round_key})
                continue
            closed += int(settled.state != RoundState.OPEN.value)
        # After the rounds: a round whose own deadline passed is settled (released with a quorum)
        # before its run's deadline fails what is still open.
        expire_runs(session, moment)
        purge_closed_payloads(session, app=app)
        if closed:
            logger.info("sweep closed expired rounds", extra={"closed": closed})
    return closed
