"""The consortium's JSON resources as the agent reads them (banks, runs, aggregates, models).

The served OpenAPI document is authoritative for field names; where ``docs/consortium-api.md``
leaves a name open (``run_id`` or ``id``, a bare list or ``{"runs": [...]}``), the readers below
accept both spellings so that the agent does not break on a cosmetic choice of the server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["AggregateStatus", "BankInfo", "ModelInfo", "RelayedRoster", "RunInfo", "SignedBytes", "items_of"]


def items_of(document: Any, key: str) -> list[Mapping[str, Any]]:
    """The records of a list answer: a bare JSON list, or an object holding it under ``key``."""
    if isinstance(document, Mapping):
        for name in (key, "items", "data"):
            if isinstance(document.get(name), list):
                document = document[name]
                break
    if not isinstance(document, list):
        raise TypeError(f"expected a list of {key}, got {type(document).__name__}")
    return [item for item in document if isinstance(item, Mapping)]


def _first(record: Mapping[str, Any], *names: str, default: Any = None) -> Any:
    for name in names:
        if record.get(name) is not None:
            return record[name]
    return default


@dataclass(frozen=True)
class BankInfo:
    """An enrolled bank and its public keys (base64), if registered."""

    bank_id: str
    name: str = ""
    signing_key: str | None = None
    box_key: str | None = None

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> BankInfo:
        """Read one record of ``GET /v1/banks``."""
        return cls(
            bank_id=str(_first(record, "bank_id", "id")),
            name=str(record.get("name") or ""),
            signing_key=_first(record, "signing_key"),
            box_key=_first(record, "box_key"),
        )


@dataclass(frozen=True)
class RunInfo:
    """A training run as the agent needs it."""

    run_id: str
    model: str
    state: str
    params: Mapping[str, Any] = field(default_factory=dict)
    participants: tuple[str, ...] = ()
    min_banks: int = 3
    round_timeout_s: float = 600.0
    failure_reason: str = ""
    created_at: str = ""
    key_id: str = ""
    window: Mapping[str, Any] | None = None
    withdrawn: Mapping[str, str] = field(default_factory=dict)
    baseline_version: int | None = None
    promotion_tolerance: float | None = None

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> RunInfo:
        """Read one run of ``GET /v1/runs`` or ``GET /v1/runs/{run_id}``."""
        participants: Sequence[Any] = record.get("participants") or ()
        return cls(
            run_id=str(_first(record, "run_id", "id")),
            model=str(record.get("model", "")),
            state=str(record.get("state", "")),
            params=dict(record.get("params") or {}),
            participants=tuple(
                str(p.get("bank_id") if isinstance(p, Mapping) else p) for p in participants
            ),
            min_banks=int(record.get("min_banks") or 3),
            round_timeout_s=float(record.get("round_timeout_s") or 600.0),
            failure_reason=str(_first(record, "failure_reason", "reason", default="")),
            created_at=str(record.get("created_at") or ""),
            key_id=str(record.get("key_id") or ""),
            window=dict(record["window"]) if isinstance(record.get("window"), Mapping) else None,
            withdrawn={str(k): str(v) for k, v in (record.get("withdrawn") or {}).items()},
            baseline_version=None if record.get("baseline_version") is None else int(record["baseline_version"]),
            promotion_tolerance=None if record.get("promotion_tolerance") is None
            else float(record["promotion_tolerance"]),
        )

    @property
    def active(self) -> tuple[str, ...]:
        """The participants that did not withdraw."""
        return tuple(b for b in self.participants if b not in self.withdrawn)

    def party_index(self, bank_id: str) -> int:
        """The bank's place among the sorted participants (the same number on every bank)."""
        return sorted(self.participants).index(bank_id)


@dataclass(frozen=True)
class Contributed:
    """What the consortium answered to a contribution: the round's sum if it was released within
    the wait, the ledger's receipt of the contribution and, in a private run, the receipt of the
    entry recording the bank's privacy spend (as sent, not yet verified)."""

    released: AggregateStatus | None
    receipt: dict[str, Any] | None = None
    privacy_receipt: dict[str, Any] | None = None


@dataclass(frozen=True)
class AggregateStatus:
    """A round's sum if released (``payload``), else how far it got."""

    payload: bytes | None
    contributed: int = 0
    participants: int = 0
    contributors: frozenset[str] = frozenset()

    @property
    def released(self) -> bool:
        """Whether the sum is here."""
        return self.payload is not None


@dataclass(frozen=True)
class ModelInfo:
    """A published model."""

    version: str
    run_id: str
    model: str
    digest: str
    created_at: str = ""
    banks: tuple[str, ...] = ()
    proposals: Mapping[str, str] = field(default_factory=dict)
    """Bank id to its signature over the published file (as a proposal of the run)."""
    status: str = "promoted"
    """``promoted`` (it replaced the current model) or ``rejected`` by the gate."""

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> ModelInfo:
        """Read one record of ``GET /v1/models``."""
        return cls(
            version=str(_first(record, "version", "id")),
            run_id=str(_first(record, "run_id", "run", default="")),
            model=str(_first(record, "model", "model_family", "family", default="")),
            digest=str(_first(record, "digest", "sha256", default="")),
            created_at=str(record.get("created_at") or ""),
            banks=tuple(str(b) for b in _first(record, "contributing_banks", "banks", default=())),
            proposals={str(p["bank_id"]): str(p["signature"]) for p in record.get("proposals") or ()},
            status=str(record.get("status") or "promoted"),
        )


@dataclass(frozen=True)
class SignedBytes:
    """Bytes relayed by the consortium with who signed them (checked against the pinned roster)."""

    body: bytes
    signer: str
    signature: str
    key_id: str = ""
    roster_digest: str = ""


@dataclass(frozen=True)
class RelayedRoster:
    """A roster document as relayed, with the signatures the consortium received."""

    version: int
    digest: str
    document: bytes
    signatures: Mapping[str, str]

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> RelayedRoster:
        """Read one record of ``GET /v1/roster``."""
        return cls(
            version=int(record["version"]),
            digest=str(record["digest"]),
            document=str(record["document"]).encode("utf-8"),
            signatures={str(s["bank_id"]): str(s["signature"]) for s in record.get("signatures") or ()},
        )
