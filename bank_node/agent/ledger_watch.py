"""The bank's watch over the consortium's contribution ledger.

At every poll the agent reads the ledger's newest signed checkpoint and accepts it only with a
consistency proof from the last checkpoint it accepted (:func:`crypto.checkpoint.check_growth`): a
log rewritten, forked, shrunk or re-signed with another key stops the agent, whoever did it. The
ledger's public key is pinned the first time it is read (or given to the agent); a consortium that
stops serving the ledger once a key is pinned is treated the same way.

Every accepted contribution comes with a receipt: the agent checks that it proves this bank's own
contribution (this run, this round, these bytes) in a checkpoint signed by the pinned key, and
keeps it in ``receipts/`` of its state directory, for ``fedfraud ledger verify --receipts``. In a
differentially private run every contribution also comes with the receipt of the entry recording
this bank's privacy spend for the run (and epoch): the agent checks that it records the setting
its noise was drawn for, so the spend compliance staff read in the ledger is the one made.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
from typing import Any, Final

from bank_node.agent.client import ConsortiumClient
from bank_node.agent.errors import CeremonyError, ConsortiumError, NotFoundError, UnavailableError
from bank_node.agent.state import StateDir
from crypto.checkpoint import Checkpoint, CheckpointError, check_growth
from schemas.ledger import MAX_PROOFS_A_REQUEST, LedgerError, check_rotation, parse_entry, verify_receipt
from schemas.privacy import RunPrivacy
from schemas.round_key import parse_round_key

__all__ = ["LedgerRewrittenError", "LedgerWatch"]

log = logging.getLogger(__name__)

LEDGER_FILE = "ledger.json"
RECEIPTS = "receipts"


class LedgerRewrittenError(CeremonyError):
    """The consortium's ledger no longer extends what this bank saw: the agent stops."""


class LedgerWatch:
    """Pins the ledger's key, follows its checkpoints, checks and keeps receipts."""

    def __init__(self, client: ConsortiumClient, state: StateDir, bank_id: str, *, required: bool = True) -> None:
        self.client = client
        self.state = state
        self.bank_id = bank_id
        self.required = required
        self._unconfirmed: set[int] = set()
        #: The largest checkpoint this process checked a receipt under, beside the accepted one.
        self._checked_size = 0

    # ------------------------------------------------------------------------------ state

    def _load(self) -> dict[str, Any]:
        raw = self.state.read_secret(LEDGER_FILE)
        return {} if raw is None else dict(json.loads(raw))

    def _save(self, record: dict[str, Any]) -> None:
        self.state.write_secret(LEDGER_FILE, json.dumps(record, indent=2, sort_keys=True).encode())

    @property
    def public_key(self) -> str | None:
        """The pinned ledger key, if any."""
        key = self._load().get("public_key")
        return str(key) if key else None

    def checkpoint(self) -> Checkpoint | None:
        """The last checkpoint this bank accepted."""
        document = self._load().get("checkpoint")
        return None if document is None else Checkpoint.from_json(document)

    def pin(self, public_key: str, origin: str) -> None:
        """Pin the ledger's key (given out of band, or read the first time); ``origin`` "" leaves
        the log's name to be pinned from its first checkpoint."""
        record = self._load()
        if record.get("public_key") not in (None, public_key):
            raise LedgerRewrittenError(f"this bank pinned ledger key {record['public_key']}; refusing to "
                                       f"replace it with {public_key}")
        self._save({**record, "public_key": public_key, "origin": origin or record.get("origin", "")})

    # ------------------------------------------------------------------------------ watch

    def watch(self) -> Checkpoint | None:
        """Accept the newest checkpoint if the log only grew since the last one; None if the
        consortium keeps no ledger (and no key was pinned) or is unreachable now.

        Raises
        ------
        LedgerRewrittenError
            The log was rewritten, forked, shrunk or re-signed, or has gone: the agent stops.
        """
        key = self.public_key
        try:
            if key is None:
                found = self.client.ledger_key()
                self.pin(found["public_key"], found["origin"])
                key = found["public_key"]
                log.info("ledger key pinned: %s (origin %s)", key, found["origin"])
            new = Checkpoint.from_json(self.client.ledger_checkpoint())
            old = seen = self.checkpoint()
            if not _signs(new, key):  # the consortium may have rotated the key since the last look
                old, key = self._follow_rotations(old, key)
            proof: list[bytes] = []
            if old is not None and 0 < old.size < new.size:
                document = self.client.ledger_consistency(old.size, new.size)
                signed = Checkpoint.from_json(document.get("checkpoint"))
                if signed != new:
                    raise CheckpointError(f"the consistency proof comes with another checkpoint of size {signed.size}")
                proof = _hashes(document)
        except NotFoundError:
            if key is None and not self.required:
                log.warning("the consortium keeps no contribution ledger: nothing to watch")
                return None
            if key is None:
                raise LedgerRewrittenError("the consortium serves no contribution ledger, which this bank requires: "
                                           "the agent stops") from None
            raise LedgerRewrittenError("the consortium no longer serves its contribution ledger, whose key this "
                                       "bank pinned: the agent stops") from None
        except ConsortiumError as exc:
            if exc.document.get("ledger_broken_at") is not None:  # the consortium found it rewritten itself
                raise LedgerRewrittenError(f"{exc.message}: the agent stops") from None
            if exc.retryable:
                log.warning("the ledger's checkpoint not read now: %s", exc)
                return None
            raise
        except (CheckpointError, ValueError, TypeError) as exc:
            raise LedgerRewrittenError(f"the consortium's ledger answered what is not a valid checkpoint or proof: "
                                       f"{exc}") from None
        try:
            origin = self._load().get("origin")
            if origin and new.origin != origin:
                raise CheckpointError(f"the checkpoint is of log {new.origin!r}, not the pinned {origin!r}")
            if old is None:
                new.verify(key)
            else:
                check_growth(old, new, proof, key)
        except CheckpointError as exc:
            raise LedgerRewrittenError(
                f"the consortium's ledger does not extend the one this bank saw ({exc}); the agent stops until "
                "the consortium's operators explain it (fedfraud ledger verify with this bank's receipts)") from None
        self._confirm_receipts(new, key, since=0 if seen is None else seen.size)
        record = self._load()
        self._save({**record, "checkpoint": new.to_json(), "origin": record.get("origin") or new.origin})
        return new

    def _follow_rotations(self, accepted: Checkpoint | None, key: str) -> tuple[Checkpoint | None, str]:
        """Follow the ledger's key rotations made after ``accepted`` (signed by ``key``): each must
        be endorsed by the key in force over the log this bank accepted, extended, and be in the
        log the new key signs. The key and checkpoint reached are pinned and accepted.

        Raises
        ------
        LedgerRewrittenError
            A rotation not endorsed by the key this bank trusts (whoever holds only the database
            or a new key cannot rotate to it), or not in the log this bank accepted.
        """
        origin = self._load().get("origin") or (accepted.origin if accepted is not None else "")
        for index, body in self.client.ledger_rotations():
            if accepted is not None and index < accepted.size:
                continue  # followed before (or of a log this bank never saw signed by an older key)
            fields = parse_entry(body, index)
            if (fields.get("details") or {}).get("previous_key") != key:
                continue  # a rotation between keys before the one pinned out of band
            if accepted is not None and accepted.size == index:
                before = accepted
            else:
                document = self.client.ledger_inclusion(index - 1, index)
                before = Checkpoint.from_json(document.get("checkpoint"))
                if accepted is None:
                    before.verify(key)
                else:
                    growth = self.client.ledger_consistency(accepted.size, index)
                    check_growth(accepted, before, _hashes(growth), key)
            try:
                new_key = check_rotation(fields, origin=origin or before.origin, root=before.root, current_key=key)
            except LedgerError as exc:
                raise LedgerRewrittenError(f"the consortium's ledger names a new signing key this bank cannot trust "
                                           f"({exc}): the agent stops") from None
            document = self.client.ledger_inclusion(index, index + 1)
            after = Checkpoint.from_json(document.get("checkpoint"))
            verify_receipt({"entry": body, "index": index, "proof": document.get("proof", []),
                            "checkpoint": after.to_json()}, new_key)
            growth = self.client.ledger_consistency(index, index + 1)
            check_growth(before, after, _hashes(growth), new_key,
                         old_key_b64=key)
            record = self._load()
            rotations = [*record.get("rotations", []), {"index": index, "public_key": new_key, "previous_key": key}]
            self._save({**record, "public_key": new_key, "rotations": rotations, "checkpoint": after.to_json(),
                        "origin": record.get("origin") or after.origin})
            log.info("ledger key rotation followed: entry %d, key %s (endorsed by %s)", index, new_key, key)
            accepted, key = after, new_key
        return accepted, key

    def key_at(self, size: int, record: dict[str, Any] | None = None) -> str | None:
        """The key that signs the checkpoint of the log's first ``size`` entries, by the
        rotations this bank followed (the pinned key when it followed none), from the state
        ``record`` (read when not given)."""
        record = self._load() if record is None else record
        rotations = sorted(record.get("rotations", []), key=lambda r: int(r["index"]))
        if not rotations:
            return str(record["public_key"]) if record.get("public_key") else None
        found = str(rotations[0].get("previous_key") or record.get("public_key"))
        for rotation in rotations:
            if size >= int(rotation["index"]) + 1:
                found = str(rotation["public_key"])
        return found

    def _key_for(self, receipt: dict[str, Any], key: str) -> str:
        """The key to check a receipt under: the one that signs its checkpoint's size by the
        rotations followed so far, after following those made since the last look at the log if
        the checkpoint is newer than that look (a receipt of an entry recorded before a rotation
        keeps its checkpoint, signed by the key of its time).

        Raises
        ------
        UnavailableError
            A rotation is to be followed and the ledger cannot be read now (try again).
        """
        try:
            checkpoint = Checkpoint.from_json(receipt.get("checkpoint"))
        except CheckpointError:
            return key  # malformed: the check of the receipt says so
        record = self._load()
        chained = self.key_at(checkpoint.size, record) or key
        known = max(int((record.get("checkpoint") or {}).get("size", 0)), self._checked_size)
        if _signs(checkpoint, chained) or checkpoint.size <= known:
            return chained  # (an old checkpoint under another key fails the receipt's own check)
        if self.watch() is None:
            raise UnavailableError("the consortium's ledger, whose key has changed since this bank's last look, "
                                   "cannot be read now: try again")
        return self.key_at(checkpoint.size) or key

    def _waiting(self, since: int) -> list[int]:
        """The receipts kept since the last accepted checkpoint, of ``since`` entries: every receipt
        kept with an index at least that (a contribution made after that look at the log), those
        this process kept with a lower one (a stored contribution's receipt given again), and those
        an earlier version listed in the state file."""
        folder = self.state.root / RECEIPTS
        kept = {int(p.stem) for p in folder.glob("*.json") if p.stem.isdigit()} if folder.is_dir() else set()
        legacy = {int(i) for i in self._load().get("unconfirmed", [])}
        return sorted({i for i in kept if i >= since} | self._unconfirmed | legacy)

    def _confirm_receipts(self, new: Checkpoint, key: str, *, since: int) -> None:
        """Each receipt kept since the last poll must be in the log this bank just accepted: a
        receipt from one log and a watch of another (a fork) stops the agent."""
        waiting = self._waiting(since)
        for index in waiting:
            if index >= new.size:
                raise LedgerRewrittenError(f"entry {index}, this bank's receipted contribution, is not in the log of "
                                           f"{new.size} entries the consortium now shows: the agent stops")
        for start in range(0, len(waiting), MAX_PROOFS_A_REQUEST):
            batch = waiting[start : start + MAX_PROOFS_A_REQUEST]
            for index, proof in zip(batch, self._inclusion_proofs(batch, new), strict=True):
                receipt = json.loads((self.state.root / RECEIPTS / f"{index:012d}.json").read_text(encoding="utf-8"))
                try:
                    if isinstance(proof, CheckpointError):
                        raise proof
                    verify_receipt({**receipt, "proof": [base64.b64encode(h).decode() for h in proof],
                                    "checkpoint": new.to_json()}, key)
                except (CheckpointError, LedgerError, ValueError, TypeError) as exc:
                    raise LedgerRewrittenError(f"entry {index}, this bank's receipted contribution, is not proven in "
                                               f"the log the consortium now shows ({exc}): the agent stops") from None
        self._unconfirmed.clear()
        record = self._load()
        if "unconfirmed" in record:
            self._save({name: value for name, value in record.items() if name != "unconfirmed"})

    def _inclusion_proofs(self, indices: list[int], new: Checkpoint) -> list[list[bytes] | CheckpointError]:
        """The proofs that ``indices`` are in the log of ``new``, asked in one request (one per
        entry from a consortium of a version without it); per entry, its proof's hashes, or what
        is wrong with the answer (a proof under another checkpoint, a proof of another entry, a
        malformed one): the caller names the entry when it stops."""
        try:
            document = self.client.ledger_inclusions(indices, new.size)
        except NotFoundError:
            return [self._proof_of(self.client.ledger_inclusion(index, new.size), index, new) for index in indices]
        proofs = document.get("proofs")
        if not isinstance(proofs, list) or len(proofs) != len(indices):
            return [CheckpointError("the consortium did not answer one proof per entry asked")] * len(indices)
        return [self._proof_of({**item, "checkpoint": document.get("checkpoint")}, index, new)
                if isinstance(item, dict) else CheckpointError("a proof that is not an object")
                for index, item in zip(indices, proofs, strict=True)]

    @staticmethod
    def _proof_of(document: dict[str, Any], index: int, new: Checkpoint) -> list[bytes] | CheckpointError:
        try:
            if Checkpoint.from_json(document.get("checkpoint")) != new:
                return CheckpointError("the proof comes with another checkpoint")
            if "index" in document and document["index"] != index:
                return CheckpointError(f"the proof is of entry {document['index']}")
            return _hashes(document)
        except (CheckpointError, ValueError, TypeError) as exc:
            return CheckpointError(str(exc))

    # ------------------------------------------------------------------------------ receipts

    def keep(self, run_id: str, round_key: str, payload: bytes, receipt: dict[str, Any] | None, *,
             privacy_receipt: dict[str, Any] | None = None, privacy: RunPrivacy | None = None) -> None:
        """Check a contribution's receipt and keep it; in a private run (``privacy``: the setting
        this bank's noise was drawn for), check and keep the receipt of the ledger entry that
        records this bank's privacy spend too.

        Raises
        ------
        LedgerRewrittenError
            A receipt under another key, or one that does not prove this very contribution; in a
            private run, no privacy receipt, or one recording another spend than this bank's
            (a consortium understating what banks spent would mislead every compliance review).
        """
        key = self.public_key
        if key is None:
            if self.required:
                raise LedgerRewrittenError(f"run {run_id}: contributing before the ledger's key is pinned")
            return  # a consortium without a ledger, accepted by this bank's settings
        if receipt is None:
            raise LedgerRewrittenError(f"run {run_id}, round {round_key}: the consortium stored this bank's "
                                       "contribution without a ledger receipt")
        key = self._key_for(receipt, key)
        fields, checkpoint = _verified(receipt, key, f"run {run_id}, round {round_key}: the receipt")
        self._checked_size = max(self._checked_size, checkpoint.size)
        details = fields.get("details") or {}
        expected = {"event": "contribution.accepted", "bank_id": self.bank_id, "run_id": run_id}
        if any(fields.get(name) != value for name, value in expected.items()) \
                or details.get("round_key") != round_key \
                or details.get("payload_sha256") != hashlib.sha256(payload).hexdigest():
            raise LedgerRewrittenError(f"run {run_id}, round {round_key}: the receipt records another contribution "
                                       f"(entry {fields.get('index')})")
        if checkpoint.origin != self._load().get("origin", checkpoint.origin):
            raise LedgerRewrittenError(f"run {run_id}, round {round_key}: the receipt is of log {checkpoint.origin!r}")
        self._store(int(fields["index"]), receipt)
        self._keep_privacy(run_id, round_key, privacy_receipt, privacy, key)

    def keep_privacy(self, run_id: str, round_key: str, privacy_receipt: dict[str, Any],
                     privacy: RunPrivacy | None) -> None:
        """Check and keep the privacy receipt that comes with a contribution answered as stored
        before (409): the bank's spend in the run's epoch, as :meth:`keep` checks it."""
        key = self.public_key
        if key is not None:
            self._keep_privacy(run_id, round_key, privacy_receipt, privacy, key)

    def _keep_privacy(self, run_id: str, round_key: str, receipt: dict[str, Any] | None,
                      privacy: RunPrivacy | None, key: str) -> None:
        spent = self._privacy_entry(run_id, round_key, receipt, privacy, key)
        if spent is not None and receipt is not None:
            self._store(spent, receipt)
            self._checked(run_id, round_key)

    def require_privacy(self, run_id: str, epochs: set[int]) -> None:
        """Before the bank proposes a private run's model: its spend in every epoch it sent
        contributions in was recorded and checked. A consortium that answered every contribution
        of an epoch as a replay (409), so that no privacy receipt came, is caught here.

        Raises
        ------
        LedgerRewrittenError
            An epoch without a checked privacy receipt (only with the ledger's key pinned).
        """
        if self.public_key is None:
            return
        checked = set(self._load().get("privacy_checked", {}).get(run_id, []))
        missing = sorted(set(epochs) - checked)
        if missing:
            raise LedgerRewrittenError(
                f"run {run_id}: the consortium never showed this bank the ledger entry recording its privacy spend "
                f"in epoch(s) {', '.join(map(str, missing))} (its contributions were answered without that "
                "receipt): the agent stops")

    def _checked(self, run_id: str, round_key: str) -> None:
        epoch = parse_round_key(round_key).epoch
        record = self._load()
        checked = dict(record.get("privacy_checked", {}))
        if epoch not in checked.get(run_id, []):
            checked[run_id] = sorted({*checked.get(run_id, []), epoch})
            self._save({**record, "privacy_checked": checked})

    def _privacy_entry(self, run_id: str, round_key: str, receipt: dict[str, Any] | None,
                       privacy: RunPrivacy | None, key: str) -> int | None:
        """The index of the entry a privacy receipt proves, once checked against what this bank
        spent in the run's epoch of ``round_key``; None outside private runs."""
        where = f"run {run_id}, round {round_key}"
        if privacy is None:
            if receipt is not None:
                raise LedgerRewrittenError(f"{where}: the consortium records a privacy spend in this bank's name in a "
                                           "run this bank takes part in without differential privacy")
            return None
        if receipt is None:
            raise LedgerRewrittenError(f"{where}: the consortium stored this bank's contribution to a private run "
                                       "without the receipt of the ledger entry recording its privacy spend")
        fields, checkpoint = _verified(receipt, self._key_for(receipt, key), f"{where}: the privacy receipt")
        details = dict(fields.get("details") or {})
        epoch = parse_round_key(round_key).epoch
        if (fields.get("event"), fields.get("bank_id"), fields.get("run_id"), details.pop("epoch", 0)) != (
                "privacy.spent", self.bank_id, run_id, epoch):
            raise LedgerRewrittenError(f"{where}: the privacy receipt records another entry (entry {fields.get('index')})")
        details.pop("round_key", None)
        spent = privacy.to_json()
        if not _records_at_least(details, spent):
            raise LedgerRewrittenError(
                f"{where}: the ledger records this bank's privacy spend as {json.dumps(details, sort_keys=True)}, "
                f"not what it spent, {json.dumps(spent, sort_keys=True)} (entry {fields.get('index')}): the agent stops")
        if checkpoint.origin != self._load().get("origin", checkpoint.origin):
            raise LedgerRewrittenError(f"{where}: the privacy receipt is of log {checkpoint.origin!r}")
        return int(fields["index"])

    def _store(self, index: int, receipt: dict[str, Any]) -> None:
        folder = self.state.root / RECEIPTS
        folder.mkdir(mode=0o700, exist_ok=True)
        (folder / f"{index:012d}.json").write_text(json.dumps(receipt, sort_keys=True), encoding="utf-8")
        # Confirmed at the next poll: a receipt file whose index is past the last checkpoint
        # accepted is waiting by that alone (it survives a restart without a state write here);
        # one below it (the log was looked at while it was being checked) is listed in the state.
        self._unconfirmed.add(index)
        record = self._load()
        accepted = record.get("checkpoint")
        if accepted is not None and index < int(accepted.get("size", 0)):
            self._save({**record, "unconfirmed": sorted({*record.get("unconfirmed", []), index})})


def _hashes(document: dict[str, Any]) -> list[bytes]:
    """The proof's hashes in a proof answer (base64 in JSON)."""
    return [base64.b64decode(p, validate=True) for p in document.get("proof", [])]


def _signs(checkpoint: Checkpoint, key: str) -> bool:
    try:
        checkpoint.verify(key)
    except CheckpointError:
        return False
    return True


def _verified(receipt: dict[str, Any], key: str, what: str) -> tuple[dict[str, Any], Checkpoint]:
    """A receipt's entry fields and checkpoint, checked under the pinned key."""
    try:
        return verify_receipt(receipt, key)
    except LedgerError as exc:
        raise LedgerRewrittenError(f"{what} does not hold: {exc}") from None


#: Relative slack when comparing recorded and spent privacy numbers: both sides compute them
#: (noise multipliers are calibrated to about 1e-6), possibly with other library builds.
_SLACK: Final = 1e-4
#: Recorded values that must be at least the spent ones (a larger one records more spend).
_AT_LEAST: Final = ("epsilon", "delta", "releases", "terminal_epsilon", "gate_epsilon", "total_epsilon")
#: Recorded noise that must be at most the noise drawn (more noise recorded is less spend).
_AT_MOST: Final = ("noise_multiplier", "terminal_noise_multiplier", "gate_noise_multiplier")


def _records_at_least(recorded: dict[str, Any], spent: dict[str, Any]) -> bool:
    """Whether a recorded privacy setting records at least the spend made: every mechanism spent
    is there, with no smaller epsilon, delta or number of releases and no larger noise multiplier
    (to a relative slack of :data:`_SLACK`), and the same clipping bound. More recorded than spent
    (a later version recording more) is not an understatement."""
    for name, value in spent.items():
        if name == "accounting":  # a label of the method; the numbers are what compose
            continue
        other = recorded.get(name)
        if not isinstance(value, int | float) or isinstance(value, bool):
            if other != value:
                return False
            continue
        if not isinstance(other, int | float) or isinstance(other, bool):
            return False
        if name in _AT_LEAST:
            if other < value * (1 - _SLACK):
                return False
        elif name in _AT_MOST:
            if other > value * (1 + _SLACK):
                return False
        elif not math.isclose(other, value, rel_tol=_SLACK):
            return False
    return True
