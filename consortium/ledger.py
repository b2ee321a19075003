"""The contribution ledger in the consortium's database: append, prove, check, export.

Every state change calls :func:`record` before its ``session.commit()``: the entry and the change
commit together or not at all. Appending increments the single ``ledger_head`` row first, which
serializes the writers of entries (a row lock on PostgreSQL, the write lock on SQLite), so entries
commit in index order. The entry is signed in the same transaction: the row stores the Ed25519
checkpoint of the log up to and including it (``schemas/ledger.py``).

Each process keeps the Merkle tree of the committed entries (:class:`crypto.merkle.Tree`) and
brings it up to date from the database before it appends or proves. While doing so it checks every
new row: its leaf hash, and the signed root stored with it. A row that does not hold marks the
ledger broken at that entry: the process then refuses every state change (503) and signs nothing
more, rather than extend, under its key, a history someone rewrote.

The signing key is the consortium's own (``LEDGER_KEY_FILE``, created on first start, mode 0600);
it signs checkpoints only. Banks pin its public key. :func:`rotate_key` replaces it: a
``ledger.key_rotated`` entry, endorsed by the old key over the log before it and signed by the new
one, which signs from there on; every process follows the rotation when it reads that entry
(``schemas/ledger.py`` says how a verifier follows the chain of keys).
"""

from __future__ import annotations

import base64
import contextlib
import csv
import fcntl
import hashlib
import io
import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

from flask import Flask, Response, current_app, stream_with_context
from nacl.signing import SigningKey
from sqlalchemy import Select, event, func, insert, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, SessionTransaction

from consortium.errors import ConsortiumError, Unavailable
from consortium.extensions import now, write_lock
from consortium.metrics import observe
from consortium.storage.database import Database
from consortium.storage.models import LedgerEntry, LedgerHead
from crypto.checkpoint import Checkpoint, CheckpointError
from crypto.merkle import EMPTY_ROOT, Tree, leaf_hash
from crypto.signing import b64encode
from schemas.ledger import (
    ROTATION,
    LedgerError,
    LogVerifier,
    Verification,
    canonical_entry,
    endorse_rotation,
    key_named,
    parse_entry,
    receipt_document,
)

__all__ = [
    "Ledger",
    "checkpoint_of",
    "export_csv",
    "export_jsonl",
    "export_response",
    "init_ledger",
    "ledger",
    "receipt",
    "receipt_header",
    "record",
    "record_refusal",
    "rotate_key",
    "verify_database",
]

logger = logging.getLogger("consortium.ledger")

_EXTENSION = "fedfraud_ledger"
_PENDING = "fedfraud_ledger_pending"
#: Entries whose text a process keeps after committing them, for their receipts.
RECENT_ENTRIES = 256


@dataclass(frozen=True)
class _Pending:
    """An entry appended in a transaction not yet committed."""

    leaf: bytes
    timestamp_ms: int
    body: bytes
    checkpoint: Checkpoint
_APPENDED = "fedfraud_ledger_appended"
KEY_FILE_NAME = "ledger-signing.key"


def _write_key(path: Path, key: SigningKey) -> bool:
    """Write ``key`` at ``path`` whole (aside, then linked) unless a file is there; True if written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".ledger-key-")
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, base64.b64encode(bytes(key)) + b"\n")
        os.fsync(fd)
        os.close(fd)
        try:
            os.link(temporary, path)
            return True
        except FileExistsError:
            return False
    finally:
        os.unlink(temporary)


def _read_key(path: Path) -> SigningKey:
    if path.stat().st_mode & 0o077:
        raise RuntimeError(f"the ledger signing key {path} is readable by others: chmod 600 it")
    return SigningKey(base64.b64decode(path.read_bytes().strip(), validate=True))


def _public(key: SigningKey) -> str:
    return b64encode(bytes(key.verify_key))


def _held_keys(key_file: Path | None) -> list[tuple[Path, SigningKey]]:
    """The keys in the key file and staged beside it, read twice over if one moves meanwhile (a
    process completing a rotation moves the staged key into the file)."""
    if key_file is None:
        return []
    for _ in range(2):
        found = []
        try:
            for path in (key_file, staged_key_path(key_file)):
                if path.exists():
                    found.append((path, _read_key(path)))
        except FileNotFoundError:
            continue
        return found
    return []


def _load_or_create_key(path: Path) -> SigningKey:
    """The key stored at ``path``, created there if absent. Two processes starting at once agree:
    the file appears whole (written aside, then linked), and the loser reads the winner's."""
    if not path.exists() and _write_key(path, SigningKey.generate()):
        logger.info("ledger signing key created", extra={"path": str(path)})
    return _read_key(path)


def staged_key_path(path: Path) -> Path:
    """Where a rotation keeps the next key until the entry naming it is committed."""
    return path.with_name(path.name + ".next")


@dataclass
class Ledger:
    """One process's view of the log: the signing key and the tree of committed entries."""

    key: SigningKey
    origin: str
    tree: Tree = field(default_factory=Tree)
    lock: threading.Lock = field(default_factory=threading.Lock)
    broken: tuple[int, str] | None = None
    last_ms: int = 0
    witness: Path | None = None
    witness_checked: bool = False
    verified: dict[int, bytes] = field(default_factory=dict)
    """Digest of each stored row as :func:`verify_database` last verified it."""
    _witness_fd: int | None = None
    recent: dict[int, tuple[bytes, Checkpoint]] = field(default_factory=dict)
    """The text and checkpoint of the last entries this process committed (for their receipts)."""
    key_file: Path | None = None
    chain: list[str] = field(default_factory=list)
    """Every key of the log read so far: entry 0's, then each rotation's."""

    @property
    def own_key(self) -> str:
        """The public half of the key this process holds."""
        return b64encode(bytes(self.key.verify_key))

    @property
    def log_key(self) -> str | None:
        """The key the log is signed by from its newest entry read (None before any entry)."""
        return self.chain[-1] if self.chain else None

    @property
    def public_key(self) -> str:
        """The key that signs the log now (this process's own before the log has entries)."""
        return self.log_key or self.own_key

    def signer(self) -> SigningKey:
        """The key to sign the next checkpoint with: the log's current key, read again from the
        key file (or the one a rotation staged beside it) once another process rotated it.

        Raises
        ------
        Unavailable
            No key file holds the log's current key: this process signs nothing.
        """
        if self.log_key is None or self.own_key == self.log_key:
            return self.key
        for path, candidate in _held_keys(self.key_file):
            if _public(candidate) == self.log_key:
                self.key = candidate
                if path != self.key_file and self.key_file is not None:  # a rotation cut short
                    with contextlib.suppress(FileNotFoundError):
                        os.replace(path, self.key_file)
                logger.info("ledger signing key reloaded after a rotation", extra={"public_key": self.log_key})
                return candidate
        raise Unavailable(f"the ledger is now signed by key {self.log_key}, which this process does not hold "
                          f"(key file {self.key_file}): restore that key file, then restart the service")

    def _follow(self, session: Session, seq: int, body: str) -> bool:
        """Follow the log's key through entry ``seq`` (before its leaf joins the tree); False if
        it is a key rotation the key in force did not endorse (the log is then marked broken)."""
        if seq != 0 and ROTATION not in body:
            return True
        try:
            named = key_named(parse_entry(body), current_key=self.public_key, origin=self.origin,
                              root=self.tree.root())
        except LedgerError as exc:
            self._break(session, seq, str(exc))
            return False
        self._adopt(seq, named)
        return True

    def _adopt(self, seq: int, named: str | None) -> None:
        """Entry ``seq`` named ``named`` as the log's key (:func:`schemas.ledger.key_named`)."""
        if seq == 0:
            self.chain = [named or self.own_key]
        elif named is not None:
            self.chain.append(named)

    def _check_chain(self, session: Session) -> None:
        """The log's keys must include one this service holds: a log whose first entry names
        another key and is signed by it was re-signed by someone without the service's key (who
        could otherwise serve it as the log, and have new banks pin that key)."""
        if not self.chain:
            return
        held = {self.own_key, *(_public(key) for _, key in _held_keys(self.key_file))}
        if not held.intersection(self.chain):
            self._break(session, 0, f"entry 0: the log is signed by key {self.chain[0]}"
                                    + (f" and its successors ({', '.join(self.chain[1:])})" if self.chain[1:] else "")
                                    + ", none of which this service holds: the log was re-signed by someone else")

    def sync(self, session: Session, below: int | None = None) -> Tree:
        """Bring the tree up to the committed entries (those under ``below`` when given),
        checking each new one; call with :attr:`lock` held.

        Each new row's leaf must hash its body and its stored root must be the root of the log up
        to it; the newest row's signature is checked, which with the chain of roots proves every
        body read is the one signed. A row that fails is looked for precisely (every signature
        from the start) so that the first bad entry is named."""
        if below is not None and self.tree.size >= below and self.witness_checked:
            return self.tree  # already holds every entry asked for
        query = select(LedgerEntry.seq, LedgerEntry.body, LedgerEntry.leaf_hash, LedgerEntry.root,
                       LedgerEntry.timestamp_ms, LedgerEntry.signature) \
            .where(LedgerEntry.seq >= self.tree.size).order_by(LedgerEntry.seq)
        if below is not None:
            query = query.where(LedgerEntry.seq < below)
        last, chain_changed = None, False
        for seq, body, stored_leaf, stored_root, timestamp_ms, signature in session.connection().execute(query):
            if self.broken is not None:
                break
            leaf = leaf_hash(body.encode("utf-8"))
            if seq != self.tree.size:
                self._break(session, self.tree.size, f"entry {self.tree.size} is missing")
            elif leaf.hex() != stored_leaf:
                self._break(session, seq, f"entry {seq} is not the entry that was appended (its leaf hash differs)")
            elif self.tree.root_with(leaf).hex() != stored_root:
                self._break(session, seq, f"entry {seq}: the log up to it is not the one the consortium signed")
            elif self._follow(session, seq, body):
                if seq == 0 or ROTATION in body:
                    chain_changed = True
                self.tree.append(leaf)
                last = Checkpoint(self.origin, seq + 1, bytes.fromhex(stored_root), timestamp_ms, signature)
        if self.broken is None and chain_changed:
            self._check_chain(session)
        if self.broken is None and last is not None:
            try:
                last.verify(self.public_key)
            except CheckpointError:
                self._break(session, last.size - 1, f"entry {last.size - 1}: its checkpoint is not signed by the "
                                                    "log's key")
            else:  # only a signed time may hold back the next checkpoints' times
                self.last_ms = max(self.last_ms, last.timestamp_ms)
        if self.broken is None and not self.witness_checked:
            self._check_witness(session)
        return self.tree

    # The witness: the newest size and root this service signed, kept beside the key, outside the
    # database. Whoever deletes the newest entries from the database cannot hide it from a process
    # that starts later (a running process notices by itself: its tree is longer than the log).

    def record_witness(self, size: int, root: bytes) -> None:
        """Remember that the log held ``size`` entries with ``root`` (never lowers what is kept)."""
        if self.witness is None:
            return
        with self.lock:  # one descriptor per process, kept open; the file lock orders processes
            if self._witness_fd is None:
                self._witness_fd = os.open(self.witness, os.O_RDWR | os.O_CREAT, 0o600)
            descriptor = self._witness_fd
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            try:
                kept = _read_witness(os.pread(descriptor, 4096, 0).decode("utf-8", "replace"))
                if kept is None or size > kept[0]:
                    text = json.dumps({"size": size, "root": root.hex()}).encode()
                    os.pwrite(descriptor, text, 0)
                    os.ftruncate(descriptor, len(text))
            finally:
                fcntl.flock(descriptor, fcntl.LOCK_UN)

    def extend(self, committed: list[_Pending], size: int, root: bytes) -> None:
        """Add the entries this process has just committed to the tree, if it ends where they
        begin: the process need not read back and check what it wrote itself (the next
        :meth:`sync` reads them otherwise, as it reads others'). Their texts and checkpoints are
        kept a while for their receipts."""
        with self.lock:
            if self.broken is not None or not committed or self.tree.size != size - len(committed):
                return
            if self.tree.root_with(*(entry.leaf for entry in committed)) != root:
                return  # not the tree the entries were signed over: sync will read and check them
            for entry in committed:
                if self.tree.size == 0 or ROTATION.encode() in entry.body:  # the key this process itself put in force
                    self._adopt(self.tree.size, key_named(parse_entry(entry.body), trusted=True))
                self.recent[self.tree.size] = (entry.body, entry.checkpoint)
                self.tree.append(entry.leaf)
            self.last_ms = max(self.last_ms, committed[-1].timestamp_ms)
            while len(self.recent) > RECENT_ENTRIES:
                del self.recent[next(iter(self.recent))]

    def _check_witness(self, session: Session) -> None:
        """Once per process, at its first look at the log: later, a cut shows by itself (this
        process's tree is then longer than the log it appends to)."""
        self.witness_checked = True
        if self.witness is None or not self.witness.exists():
            return
        kept = _read_witness(self.witness.read_text(encoding="utf-8"))
        if kept is None:
            return
        size, root = kept
        if self.tree.size >= size:
            if self.tree.root(size).hex() != root:
                self._break(session, size - 1, f"the log's first {size} entries are not those this service signed")
            return
        committed = int(session.connection().execute(select(func.count()).select_from(LedgerEntry)).scalar_one())
        if committed < size:
            self.mark_broken(committed, f"entries {committed} to {size - 1} are missing: this service signed a log "
                                        f"of {size} entries")

    def _break(self, session: Session, seq: int, problem: str) -> None:
        """Mark the log broken, at the first entry that fails a full check up to ``seq``."""
        verifier = LogVerifier(self.public_key, origin=self.origin)
        for position, row in enumerate(_rows(session, select(LedgerEntry).where(LedgerEntry.seq <= seq)
                                                      .order_by(LedgerEntry.seq))):
            verifier.add(position, row.body, checkpoint_of(row, self.origin))
            if not verifier.result.ok:
                break
        if verifier.result.first_bad is not None and verifier.result.problem is not None:
            seq, problem = verifier.result.first_bad, verifier.result.problem
        self.mark_broken(seq, problem)

    def mark_broken(self, seq: int, problem: str) -> None:
        """From now on this process changes nothing (the first finding stays)."""
        if self.broken is None:
            self.broken = (seq, problem)
            logger.error("the ledger is broken: no state change is accepted until it is restored",
                         extra={"entry": seq, "problem": problem})

    def check_intact(self) -> None:
        """Raise :class:`Unavailable` if this process found the log rewritten."""
        if self.broken is not None:
            raise Unavailable(f"the contribution ledger is broken at entry {self.broken[0]} ({self.broken[1]}): "
                              "the consortium changes nothing until it is restored from a backup",
                              ledger_broken_at=self.broken[0])

    def sign(self, size: int, root: bytes, at: datetime, *, not_before_ms: int = 0,
             key: SigningKey | None = None) -> Checkpoint:
        """A checkpoint signed now, dated ``at`` but never before the last one this process read
        nor ``not_before_ms``: the banks refuse a checkpoint older than one they accepted, and the
        clocks of two processes (the service and its scheduler) need not agree to the millisecond.
        Signed with the log's current key, or ``key`` (a rotation's new key)."""
        return Checkpoint(self.origin, size, root, max(_ms(at), self.last_ms, not_before_ms)).signed(
            key or self.signer())


def _ms(at: datetime) -> int:
    return int(at.replace(tzinfo=timezone.utc).timestamp() * 1000)


def key_path(ledger_key_file: str | None, blob_dir: str | os.PathLike[str]) -> Path:
    """Where the signing key is: ``LEDGER_KEY_FILE``, else beside the blob directory (its witness
    of the newest signed head is the same name with ``.head``)."""
    return Path(ledger_key_file) if ledger_key_file else Path(blob_dir).parent / KEY_FILE_NAME


def init_ledger(app: Flask) -> None:
    """Load (or create) the signing key and attach an empty view of the log to ``app``."""
    path = key_path(app.config.get("LEDGER_KEY_FILE"), app.config["BLOB_DIR"])
    app.extensions[_EXTENSION] = Ledger(key=_load_or_create_key(path), origin=app.config["LEDGER_ORIGIN"],
                                        witness=path.with_name(path.name + ".head"), key_file=path)


def ledger(app: Flask | None = None) -> Ledger:
    """The app's ledger view."""
    return (app or current_app).extensions[_EXTENSION]  # type: ignore[no-any-return]


@event.listens_for(Session, "after_transaction_end")
def _forget_pending(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        session.info.pop(_PENDING, None)
        session.info.pop(_APPENDED, None)


@event.listens_for(Session, "after_commit")
def _witness_commit(session: Session) -> None:
    appended = session.info.get(_APPENDED)
    if appended is not None:
        view, size, root = appended
        view.extend(session.info.get(_PENDING, []), size, root)
        view.record_witness(size, root)


def record(session: Session, event_name: str, *, bank_id: str | None = None, run_id: str | None = None,
           model_version: int | None = None, details: Mapping[str, Any] | None = None,
           rotate_to: SigningKey | None = None) -> int:
    """Append an entry to the ledger in ``session``'s transaction (commit it with the state change
    it records) and return its index. The log's first entry, ``ledger.started``, is written
    before the first event. With ``rotate_to`` the entry is a key rotation to that key (see
    :func:`rotate_key`).

    Raises
    ------
    Unavailable
        The ledger was found rewritten: no state change is accepted.
    """
    view = ledger()
    view.check_intact()
    seq = _next_seq(session)
    pending: list[_Pending] = session.info.setdefault(_PENDING, [])
    moment = now()
    at = moment.replace(microsecond=moment.microsecond // 1000 * 1000)  # the entry states milliseconds
    with view.lock:
        if not pending:
            view.sync(session, below=seq)
            view.check_intact()
            if view.tree.size != seq:  # only if the database lost committed entries under us
                missing = min(seq, view.tree.size)
                view._break(session, missing, f"entries from {missing} are missing: this process saw "
                                              f"{view.tree.size} entries, the log now gives index {seq} to the next")
                view.check_intact()
        if seq == 0:
            _append(session, view, pending, 0, "ledger.started", at,
                    details={"origin": view.origin, "public_key": view.public_key})
            seq = _next_seq(session)
        if rotate_to is not None:
            root = view.tree.root_with(*(p.leaf for p in pending))
            details = endorse_rotation(view.signer(), view.origin, seq, root, b64encode(bytes(rotate_to.verify_key)))
        return _append(session, view, pending, seq, event_name, at, bank_id=bank_id, run_id=run_id,
                       model_version=model_version, details=details, signer=rotate_to)


def rotate_key(session: Session) -> tuple[str, str]:
    """Replace the ledger's signing key; return the old and the new public key.

    Under a lock on the key's folder (one rotation at a time, across processes), a rotation cut
    short before is completed first: its key, staged beside the key file, is the log's. Then the
    new key is staged (``.next``), and a ``ledger.key_rotated`` entry is committed, endorsed by
    the old key over the log before it and signed by the new key, which signs everything after.
    Only then does the new key replace the old one in the key file (a process that reads the
    rotation before that finds it staged). The staged key is removed on failure only when the
    rotation is known not to have committed: a commit whose outcome is unknown keeps it. The old
    key is gone afterwards: banks need only the public keys, which the log itself names.

    Raises
    ------
    Unavailable
        The ledger is broken, its current key is held by no key file, or this process holds no
        key file to rotate.
    """
    view = ledger()
    if view.key_file is None:
        raise Unavailable("this service keeps its ledger key in no file: it cannot rotate it")
    staged = staged_key_path(view.key_file)
    with _rotation_lock(view.key_file):
        with view.lock:
            view.sync(session)
        view.check_intact()
        old = view.public_key
        view.signer()  # completes a rotation cut short; raises if no key file holds the log's key
        session.rollback()
        staged.unlink(missing_ok=True)  # not the log's key (signer() moved a key of the log in): never committed
        new = SigningKey.generate()
        new_public = _public(new)
        if not _write_key(staged, new):
            raise Unavailable(f"{staged} appeared while the key's folder was locked: rotate again")
        try:
            with write_lock():
                seq = record(session, ROTATION, rotate_to=new)
                session.commit()
        except BaseException:
            session.rollback()
            if _rotation_recorded(session, new_public) is False:
                staged.unlink(missing_ok=True)
            raise
        try:
            os.replace(staged, view.key_file)
        except FileNotFoundError:  # another process of the service moved it in first
            if _public(_read_key(view.key_file)) != new_public:
                raise
        with view.lock:
            view.key = new
    logger.info("ledger signing key rotated", extra={"entry": seq, "public_key": new_public})
    return old, new_public


@contextlib.contextmanager
def _rotation_lock(key_file: Path) -> Iterator[None]:
    path = key_file.with_name(key_file.name + ".lock")
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        os.close(descriptor)


def _rotation_recorded(session: Session, public_key: str) -> bool | None:
    """Whether the log holds a rotation to ``public_key``; None when the database cannot say."""
    try:
        found = session.execute(select(LedgerEntry.seq).where(LedgerEntry.event == ROTATION,
                                                              LedgerEntry.body.contains(public_key))).first()
        session.rollback()
    except SQLAlchemyError:
        session.rollback()
        return None
    return found is not None


# Core statements built once (their compiled form is cached by identity), run on the session's
# connection: the ORM's unit of work and autoflush cost more than the statements themselves (a
# state change's own rows are flushed at its commit all the same).
_NEXT_SEQ: Final = (update(LedgerHead).where(LedgerHead.id == 1).values(size=LedgerHead.size + 1)
                    .returning(LedgerHead.size))
_INSERT_ENTRY: Final = insert(LedgerEntry)


def _next_seq(session: Session) -> int:
    size = session.connection().execute(_NEXT_SEQ).scalar_one()
    return int(size) - 1


def _append(session: Session, view: Ledger, pending: list[_Pending], seq: int, event_name: str,
            at: datetime, signer: SigningKey | None = None,
            **fields: Any) -> int:
    body = canonical_entry(seq, event_name, at, **fields)
    leaf = leaf_hash(body)
    root = view.tree.root_with(*(p.leaf for p in pending), leaf)
    checkpoint = view.sign(seq + 1, root, at, not_before_ms=max((p.timestamp_ms for p in pending), default=0),
                           key=signer)
    # At once, in the transaction: no ORM object to build, flush and expire.
    session.connection().execute(_INSERT_ENTRY, {
        "seq": seq, "event": event_name, "at": at, "bank_id": fields.get("bank_id"), "run_id": fields.get("run_id"),
        "model_version": fields.get("model_version"), "body": body.decode("utf-8"), "leaf_hash": leaf.hex(),
        "root": root.hex(), "timestamp_ms": checkpoint.timestamp_ms, "signature": checkpoint.signature})
    pending.append(_Pending(leaf, checkpoint.timestamp_ms, body, checkpoint))
    session.info[_APPENDED] = (view, seq + 1, root)
    return seq


# ------------------------------------------------------------------------------------ reading

def record_refusal(session: Session, *, bank_id: str, run_id: str, round_key: str, payload: bytes,
                   refusal: ConsortiumError) -> None:
    """Record in its own transaction that a bank's contribution was refused, and why (nothing
    else changed: the refusal is the event). A ledger that cannot take it is logged, not raised:
    the bank hears the refusal itself."""
    session.rollback()
    if (metrics := observe()) is not None:
        metrics.contribution("refused")
    try:
        with write_lock():
            record(session, "contribution.refused", bank_id=bank_id, run_id=run_id,
                   details={"round_key": round_key, "payload_sha256": hashlib.sha256(payload).hexdigest(),
                            "payload_size": len(payload), "status": refusal.status, "reason": str(refusal)[:500]})
            session.commit()
    except (ConsortiumError, SQLAlchemyError) as exc:
        session.rollback()
        logger.error("a refused contribution was not recorded in the ledger", extra={"problem": str(exc)[:200]})


def receipt_header(receipt: Mapping[str, Any]) -> str:
    """A receipt as one header value (base64 of its compact JSON)."""
    return base64.b64encode(json.dumps(receipt, separators=(",", ":")).encode()).decode("ascii")


def checkpoint_of(row: LedgerEntry, origin: str) -> Checkpoint:
    """The signed checkpoint stored with an entry."""
    return Checkpoint(origin, row.seq + 1, bytes.fromhex(row.root), row.timestamp_ms, row.signature)


def latest_checkpoint(session: Session) -> Checkpoint:
    """The newest signed checkpoint (of the empty log, signed now, before any entry)."""
    view = ledger()
    with view.lock:
        view.sync(session)
    view.check_intact()
    if view.tree.size == 0:  # dated 0: the empty log proves nothing, and no later checkpoint may seem older
        return Checkpoint(view.origin, 0, EMPTY_ROOT, 0).signed(view.signer())
    row = session.get(LedgerEntry, view.tree.size - 1)
    if row is None:
        with view.lock:
            view._break(session, view.tree.size - 1, f"entry {view.tree.size - 1} is missing")
        view.check_intact()
    assert row is not None
    return checkpoint_of(row, view.origin)


def receipt(session: Session, seq: int) -> dict[str, Any]:
    """A committed entry's receipt: the entry, an inclusion proof, the signed checkpoint stored
    with it."""
    view = ledger()
    with view.lock:
        view.sync(session, below=seq + 1)
        proof = view.tree.inclusion_proof(seq, seq + 1)
    view.check_intact()
    kept = view.recent.get(seq)
    if kept is not None:
        return receipt_document(kept[0], seq, proof, kept[1])
    row = session.get(LedgerEntry, seq)
    assert row is not None, f"entry {seq} was committed"
    return receipt_document(row.body.encode("utf-8"), seq, proof, checkpoint_of(row, view.origin))


def proofs(session: Session) -> Tree:
    """The process's tree, brought up to date (for inclusion and consistency proofs)."""
    view = ledger()
    with view.lock:
        view.sync(session)
    view.check_intact()
    return view.tree


def _rows(session: Session, query: Select[Any] | None = None) -> Iterator[LedgerEntry]:
    query = query if query is not None else select(LedgerEntry).order_by(LedgerEntry.seq)
    yield from session.execute(query.execution_options(yield_per=2000)).scalars()


_COLUMNS = ("bank_id", "run_id", "model_version", "event")


_ROW_COLUMNS = (LedgerEntry.seq, LedgerEntry.body, LedgerEntry.leaf_hash, LedgerEntry.root, LedgerEntry.timestamp_ms, LedgerEntry.signature,
                LedgerEntry.event, LedgerEntry.at, LedgerEntry.bank_id, LedgerEntry.run_id, LedgerEntry.model_version)


def _row_digest(row: Any) -> bytes:
    """A digest of everything stored for an entry (to recognise a row already verified)."""
    return hashlib.sha256(repr(tuple(row)).encode("utf-8")).digest()


def verify_database(session: Session, public_key: str | None = None) -> Verification:
    """Check the whole log as stored, from the first entry, with the log's public key (the
    service's own by default): every entry canonical and in its place, its filter columns those of
    the signed entry, and the signed root stored with it that of the log up to it.

    With the service's key, a row stored exactly as when this process last verified it is not
    checked again (its signature, JSON and columns); any change to any of its columns is, so
    every call still reads and compares the whole log."""
    view = ledger()
    # Pinned to the key this process holds (not the one the log names: whoever rewrote the
    # database could name its own): the log must reach it by its chain of keys.
    verifier = LogVerifier(public_key or view.own_key, origin=view.origin)
    cache = view.verified if public_key is None else {}
    result = verifier.result
    query = select(*_ROW_COLUMNS).order_by(LedgerEntry.seq).execution_options(yield_per=5000)
    for position, row in enumerate(session.execute(query)):
        digest = _row_digest(row)
        checkpoint = Checkpoint(view.origin, row.seq + 1, bytes.fromhex(row.root), row.timestamp_ms, row.signature)
        if result.ok and row.seq == position and cache.get(position) == digest:
            verifier.add_verified(row.body, checkpoint)
            continue
        verifier.add(position, row.body, checkpoint)
        if not result.ok:
            continue
        fields = parse_entry(row.body)
        stale = [c for c in _COLUMNS if getattr(row, c) != fields[c]]
        if row.at != datetime.fromisoformat(fields["at"].removesuffix("Z")):
            stale.append("at")
        if row.leaf_hash != leaf_hash(row.body.encode("utf-8")).hex():
            stale.append("leaf_hash")
        if stale:
            result.first_bad = position
            result.problem = f"entry {position}: the columns {', '.join(stale)} differ from the signed entry"
            result.verified -= 1
        else:
            cache[position] = digest
    result = verifier.conclude()
    if not result.ok and public_key is None and result.first_bad is not None:
        with view.lock:  # what the service found, it does not extend under its key
            view.mark_broken(result.first_bad, result.problem or "")
    return result


# ------------------------------------------------------------------------------------ export

def export_jsonl(session: Session) -> Iterator[str]:
    """The log as JSON Lines: a header (origin, public key), then per entry its body, its signed
    checkpoint and the inclusion proof of the entry in that checkpoint's tree (each line is a
    receipt): what ``fedfraud ledger verify`` checks. The proofs come from the bodies as exported,
    so a changed body shows in the verifier, whatever the database holds beside it."""
    view = ledger()
    yield json.dumps({"format": "fedfraud-ledger-v1", "origin": view.origin, "public_key": view.public_key}) + "\n"
    tree = Tree()
    for row in _rows(session):
        tree.append(leaf_hash(row.body.encode("utf-8")))
        proof = tree.inclusion_proof(row.seq, row.seq + 1) if tree.size == row.seq + 1 else []  # [] past a gap
        document = receipt_document(row.body.encode("utf-8"), row.seq, proof, checkpoint_of(row, view.origin))
        yield json.dumps(document, separators=(",", ":")) + "\n"


def export_csv(session: Session) -> Iterator[str]:
    """The entries as CSV, one row each, with the signed checkpoint's root and signature."""
    columns = ["index", "at", "event", "bank_id", "run_id", "model_version", "details", "entry_sha256_leaf",
               "checkpoint_root", "checkpoint_timestamp_ms", "checkpoint_signature"]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    for row in _rows(session):
        fields = parse_entry(row.body)
        writer.writerow([row.seq, fields["at"], fields["event"], fields["bank_id"] or "", fields["run_id"] or "",
                         "" if fields["model_version"] is None else fields["model_version"],
                         json.dumps(fields["details"], sort_keys=True), leaf_hash(row.body.encode("utf-8")).hex(),
                         row.root, row.timestamp_ms,
                         row.signature])
        if buffer.tell() > 64 * 1024:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def _read_witness(text: str) -> tuple[int, str] | None:
    try:
        document = json.loads(text)
        return int(document["size"]), str(document["root"])
    except (ValueError, KeyError, TypeError):
        return None


def export_response(kind: str) -> Response:
    """The whole log as a streamed download: ``jsonl`` (each line a receipt, what ``fedfraud
    ledger verify`` checks) or ``csv``. The stream has its own session, closed when the last row
    is sent or the client goes away (the request's may be closed before a streamed body is read)."""
    rows, mimetype = (export_jsonl, "application/x-ndjson") if kind == "jsonl" else (export_csv, "text/csv")

    def stream() -> Iterator[str]:
        session = Session(Database.engine_for(current_app))
        try:
            yield from rows(session)
        finally:
            session.close()

    response = Response(stream_with_context(stream()), mimetype=mimetype)
    response.headers["Content-Disposition"] = f'attachment; filename="fedfraud-ledger.{kind}"'
    return response
