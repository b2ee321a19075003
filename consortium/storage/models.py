"""The aggregator's tables.

Ciphertexts, contexts, sealed shares and model files are never stored in the database: rows hold
their SHA-256 (the file name in the :class:`~consortium.storage.blobs.BlobStore`) and size.
Timestamps are naive UTC.
"""

from __future__ import annotations

import re

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from consortium.config import utcnow

ID_LENGTH = 64
#: Bank and run ids, and each '/'-separated segment of a round key.
ID_SEGMENT = rf"[a-z0-9][a-z0-9._-]{{0,{ID_LENGTH - 1}}}"
# \Z, not $: "$" also matches before a final newline, and "bank-9\n" is not "bank-9" (ids go into
# newline-separated signed messages).
ID_PATTERN = re.compile(rf"^{ID_SEGMENT}\Z")
ROUND_KEY_LENGTH = 200
DIGEST_LENGTH = 64


class Base(DeclarativeBase):
    """Declarative base of every table."""


class Role(str, enum.Enum):
    """What a token may do."""

    OPERATOR = "operator"
    BANK = "bank"
    COMPLIANCE = "compliance"
    MONITORING = "monitoring"  # scrapes /metrics, nothing else


class RunState(str, enum.Enum):
    """Where a training run stands."""

    OPEN = "open"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    """Its model was agreed but not better than the current one: published for the record only."""


class Bank(Base):
    """An enrolled bank and its public keys (registered once)."""

    __tablename__ = "banks"

    bank_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    signing_key: Mapped[str | None] = mapped_column(String(64), default=None)
    box_key: Mapped[str | None] = mapped_column(String(64), default=None)
    enrolled_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    keys_registered_at: Mapped[datetime | None] = mapped_column(DateTime, default=None)


class Token(Base):
    """A bearer token, stored only as its SHA-256."""

    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    token_sha256: Mapped[str] = mapped_column(String(DIGEST_LENGTH), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    bank_id: Mapped[str | None] = mapped_column(ForeignKey("banks.bank_id"), default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime, default=None)


class RosterDocument(Base):
    """A proposed roster (membership version), relayed for the banks; the banks decide what to pin."""

    __tablename__ = "rosters"

    digest: Mapped[str] = mapped_column(String(DIGEST_LENGTH), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, index=True)
    document: Mapped[str] = mapped_column(Text)
    proposed_by: Mapped[str] = mapped_column(ForeignKey("banks.bank_id"))
    proposed_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    signatures: Mapped[list[RosterSignature]] = relationship(order_by="RosterSignature.bank_id")


class RosterSignature(Base):
    """One bank's signature approving a roster document."""

    __tablename__ = "roster_signatures"
    __table_args__ = (UniqueConstraint("roster_digest", "bank_id", name="uq_roster_signatures_roster_bank"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    roster_digest: Mapped[str] = mapped_column(ForeignKey("rosters.digest"))
    bank_id: Mapped[str] = mapped_column(ForeignKey("banks.bank_id"))
    signature: Mapped[str] = mapped_column(String(128))
    signed_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class KeyMaterial(Base):
    """A public HE context, one row per key generation; the newest is the consortium's key.

    A new generation is published for a newer roster (a member removed: the key rotates)."""

    __tablename__ = "key_material"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    context_digest: Mapped[str] = mapped_column(String(DIGEST_LENGTH))
    context_size: Mapped[int] = mapped_column(BigInteger)
    scheme: Mapped[str] = mapped_column(String(16))
    key_id: Mapped[str] = mapped_column(String(32), unique=True)
    publisher_bank_id: Mapped[str] = mapped_column(ForeignKey("banks.bank_id"))
    signature: Mapped[str] = mapped_column(String(128))
    published_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    roster_version: Mapped[int] = mapped_column(Integer, default=0)
    roster_digest: Mapped[str] = mapped_column(String(DIGEST_LENGTH), default="")


class KeyShare(Base):
    """The secret context of one key generation sealed to one bank's box key: opaque bytes the
    aggregator relays, with the publisher's signature."""

    __tablename__ = "sealed_shares"
    __table_args__ = (UniqueConstraint("key_id", "bank_id", name="uq_sealed_shares_key_bank"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key_id: Mapped[str] = mapped_column(String(32), index=True)
    bank_id: Mapped[str] = mapped_column(ForeignKey("banks.bank_id"))
    share_digest: Mapped[str] = mapped_column(String(DIGEST_LENGTH))
    share_size: Mapped[int] = mapped_column(BigInteger)
    posted_by: Mapped[str] = mapped_column(ForeignKey("banks.bank_id"))
    signature: Mapped[str] = mapped_column(String(128), default="")
    posted_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Schedule(Base):
    """When a model family trains by itself: a cron cadence in the consortium's time zone, the
    run it opens, and the last firing (so that none runs twice, even from two schedulers)."""

    __tablename__ = "schedules"

    model: Mapped[str] = mapped_column(String(16), primary_key=True)
    cron: Mapped[str] = mapped_column(String(100))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    train_days: Mapped[int] = mapped_column(Integer)
    validation_days: Mapped[int] = mapped_column(Integer)
    label_delay_days: Mapped[int] = mapped_column(Integer)
    min_banks: Mapped[int | None] = mapped_column(Integer, default=None)
    run_timeout_s: Mapped[int | None] = mapped_column(Integer, default=None)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_fired_local: Mapped[datetime | None] = mapped_column(DateTime, default=None)
    last_fired_at: Mapped[datetime | None] = mapped_column(DateTime, default=None)
    last_run_id: Mapped[str | None] = mapped_column(String(ID_LENGTH), default=None)
    last_outcome: Mapped[str | None] = mapped_column(Text, default=None)


class Run(Base):
    """A training run: a sequence of secure-sum rounds, ended by agreeing proposals."""

    __tablename__ = "runs"

    run_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    model: Mapped[str] = mapped_column(String(16))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    min_banks: Mapped[int] = mapped_column(Integer)
    round_timeout_s: Mapped[int] = mapped_column(Integer)
    participants: Mapped[list[str]] = mapped_column(JSON)
    key_id: Mapped[str | None] = mapped_column(String(32), default=None)
    window: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    deadline: Mapped[datetime | None] = mapped_column(DateTime, default=None, index=True)
    withdrawn: Mapped[dict[str, str] | None] = mapped_column(JSON, default=dict)
    baseline_version: Mapped[int | None] = mapped_column(Integer, default=None)
    promotion_tolerance: Mapped[float | None] = mapped_column(Float, default=None)
    state: Mapped[str] = mapped_column(String(16), default=RunState.OPEN.value, index=True)
    failure_reason: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, default=None)

    rounds: Mapped[list[RoundRow]] = relationship(back_populates="run", order_by="RoundRow.id")


class RoundRow(Base):
    """One secure sum of a run (the first contribution opens it)."""

    __tablename__ = "rounds"
    __table_args__ = (UniqueConstraint("run_id", "round_key", name="uq_rounds_run_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.run_id"))
    round_key: Mapped[str] = mapped_column(String(ROUND_KEY_LENGTH))
    n_values: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16), default="open", index=True)
    opened_at: Mapped[datetime] = mapped_column(DateTime)
    deadline: Mapped[datetime] = mapped_column(DateTime, index=True)
    closed_at: Mapped[datetime | None] = mapped_column(DateTime, default=None)
    aggregate_digest: Mapped[str | None] = mapped_column(String(DIGEST_LENGTH), default=None)
    aggregate_size: Mapped[int | None] = mapped_column(BigInteger, default=None)
    n_addends: Mapped[int | None] = mapped_column(Integer, default=None)
    dropped: Mapped[list[str]] = mapped_column(JSON, default=list)
    failure_reason: Mapped[str | None] = mapped_column(Text, default=None)
    summing_until: Mapped[datetime | None] = mapped_column(DateTime, default=None)
    """While a large round is summed off the request: nobody else starts its sum before then."""

    run: Mapped[Run] = relationship(back_populates="rounds")
    contributions: Mapped[list[Contribution]] = relationship(back_populates="round", order_by="Contribution.bank_id")


class Contribution(Base):
    """One bank's encrypted payload for one round: its digest, size and signature."""

    __tablename__ = "contributions"
    __table_args__ = (UniqueConstraint("round_id", "bank_id", name="uq_contributions_round_bank"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.run_id"), index=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"))
    bank_id: Mapped[str] = mapped_column(ForeignKey("banks.bank_id"))
    payload_digest: Mapped[str] = mapped_column(String(DIGEST_LENGTH), index=True)
    payload_size: Mapped[int] = mapped_column(BigInteger)
    signature: Mapped[str] = mapped_column(String(128))
    received_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    payload_kept: Mapped[bool] = mapped_column(Boolean, default=True)

    round: Mapped[RoundRow] = relationship(back_populates="contributions")


class RoundNote(Base):
    """A summed bank's signed note to a released round (base64; the aggregator never reads it)."""

    __tablename__ = "round_notes"
    __table_args__ = (UniqueConstraint("round_id", "bank_id", name="uq_round_notes_round_bank"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"))
    bank_id: Mapped[str] = mapped_column(ForeignKey("banks.bank_id"))
    note: Mapped[str] = mapped_column(Text)
    signature: Mapped[str] = mapped_column(String(128))
    posted_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Proposal(Base):
    """A bank's proposed final model for a run (every proposal is kept; the latest counts)."""

    __tablename__ = "proposals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.run_id"), index=True)
    bank_id: Mapped[str] = mapped_column(ForeignKey("banks.bank_id"))
    model_digest: Mapped[str] = mapped_column(String(DIGEST_LENGTH))
    model_size: Mapped[int] = mapped_column(BigInteger)
    signature: Mapped[str] = mapped_column(String(128))
    received_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class PublishedModel(Base):
    """A model the banks agreed on, downloadable by version."""

    __tablename__ = "models"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.run_id"), unique=True)
    model_digest: Mapped[str] = mapped_column(String(DIGEST_LENGTH))
    model_size: Mapped[int] = mapped_column(BigInteger)
    family: Mapped[str] = mapped_column(String(16))
    banks: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    status: Mapped[str] = mapped_column(String(16), default="promoted")
    assessment: Mapped[str | None] = mapped_column(Text, default=None)
    baseline_version: Mapped[int | None] = mapped_column(Integer, default=None)


class Assessment(Base):
    """A bank's signed assessment of a run's candidate against the current model."""

    __tablename__ = "assessments"
    __table_args__ = (UniqueConstraint("run_id", "bank_id", name="uq_assessments_run_bank"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.run_id"), index=True)
    bank_id: Mapped[str] = mapped_column(ForeignKey("banks.bank_id"))
    document: Mapped[str] = mapped_column(Text)
    signature: Mapped[str] = mapped_column(String(128))
    posted_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class CurrentModel(Base):
    """The model each family serves now: the last promoted, or one an operator rolled back to."""

    __tablename__ = "current_models"

    family: Mapped[str] = mapped_column(String(16), primary_key=True)
    version: Mapped[int] = mapped_column(ForeignKey("models.version"))
    since: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    reason: Mapped[str] = mapped_column(Text)


class LedgerHead(Base):
    """The ledger's size, one row: appending an entry first increments it, which serializes the
    writers of entries (a row lock on PostgreSQL, the write lock on SQLite)."""

    __tablename__ = "ledger_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger, default=0)


class LedgerEntry(Base):
    """One entry of the contribution ledger (``schemas/ledger.py``) and the signed checkpoint of
    the log up to it. ``body`` is what was signed; the other columns copy it for filtering."""

    __tablename__ = "ledger_entries"
    # Each filter with the log order, so that a page of a million-entry log is read in order.
    __table_args__ = (*(Index(f"ix_ledger_entries_{column}_seq", column, "seq")
                        for column in ("event", "bank_id", "run_id", "model_version")),
                      Index("ix_ledger_entries_bank_id_event_seq", "bank_id", "event", "seq"))

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    event: Mapped[str] = mapped_column(String(40))
    at: Mapped[datetime] = mapped_column(DateTime, index=True)
    bank_id: Mapped[str | None] = mapped_column(String(ID_LENGTH), default=None)
    run_id: Mapped[str | None] = mapped_column(String(ID_LENGTH), default=None)
    model_version: Mapped[int | None] = mapped_column(Integer, default=None)
    body: Mapped[str] = mapped_column(Text)
    leaf_hash: Mapped[str] = mapped_column(String(DIGEST_LENGTH))
    root: Mapped[str] = mapped_column(String(DIGEST_LENGTH))
    timestamp_ms: Mapped[int] = mapped_column(BigInteger)
    signature: Mapped[str] = mapped_column(String(128))
