"""``fedfraud ledger verify``: check an exported contribution ledger offline, and with a bank's
receipts prove that its entries are still there unchanged.

The export is JSON Lines (``GET /v1/ledger/export``): a header naming the log and its public key,
then one receipt per entry. Everything is checked from the first entry on; the report names the
first entry that does not hold. Without ``--key`` the export's own key is used, which proves the
log consistent but not *whose* it is: pin the consortium's key (or give receipts, signed under
the key the bank saw at the time) to detect a log rewritten and re-signed with a new key.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crypto.checkpoint import Checkpoint, CheckpointError
from crypto.merkle import Tree, leaf_hash
from schemas.errors import FedfraudInputError
from schemas.ledger import LedgerError, LogVerifier, Verification, verify_receipt

__all__ = ["ExportCheck", "check_export", "load_receipts"]

FORMAT = "fedfraud-ledger-v1"


@dataclass
class ExportCheck:
    """The outcome: the log's own check, then each receipt's."""

    origin: str
    public_key: str
    key_pinned: bool
    log: Verification
    receipts_checked: int = 0
    receipt_problems: list[tuple[int, str]] = field(default_factory=list)
    rotations: list[tuple[int, str]] = field(default_factory=list)
    """(entry, new key) of every key rotation the log holds."""

    @property
    def first_bad(self) -> int | None:
        found = [index for index, _ in self.receipt_problems]
        if self.log.first_bad is not None:
            found.append(self.log.first_bad)
        return min(found) if found else None

    @property
    def ok(self) -> bool:
        return self.first_bad is None

    def lines(self) -> list[str]:
        """The report, one finding per line."""
        out = [f"log {self.origin!r}, {self.log.size} entries, signed by {self.public_key}"
               + ("" if self.key_pinned else " (the export's own key: not pinned with --key)")]
        out.extend(f"key rotated at entry {index}: signed by {key} from there on" for index, key in self.rotations)
        if self.log.ok:
            out.append(f"verified: all {self.log.size} entries hold")
        else:
            out.append(f"BROKEN at entry {self.log.first_bad}: {self.log.problem} "
                       f"(entries 0 to {self.log.verified - 1} hold)" if self.log.verified else
                       f"BROKEN at entry {self.log.first_bad}: {self.log.problem}")
        if self.receipts_checked:
            out.append(f"receipts: {self.receipts_checked - len(self.receipt_problems)} of {self.receipts_checked} "
                       "still proven by the log")
        for index, problem in sorted(self.receipt_problems):
            out.append(f"  entry {index}: {problem}")
        if self.first_bad is not None:
            out.append(f"first bad entry: {self.first_bad}")
        return out

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "first_bad": self.first_bad, "origin": self.origin, "public_key": self.public_key,
                "key_pinned": self.key_pinned, "rotations": [{"index": i, "public_key": k} for i, k in self.rotations],
                "log": self.log.to_json(), "receipts_checked": self.receipts_checked,
                "receipt_problems": [{"index": i, "problem": p} for i, p in sorted(self.receipt_problems)]}


def load_receipts(folder: Path) -> list[tuple[str, Any]]:
    """Every ``*.json`` receipt in ``folder`` (name, parsed document), in name order."""
    if not folder.is_dir():
        raise FedfraudInputError(f"--receipts {folder}: not a folder")
    found = []
    for path in sorted(folder.glob("*.json")):
        try:
            found.append((path.name, json.loads(path.read_text(encoding="utf-8"))))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise FedfraudInputError(f"receipt {path.name}: not JSON ({exc})") from None
    return found


def _header(line: str, path: Path) -> dict[str, Any]:
    try:
        header = json.loads(line)
    except json.JSONDecodeError:
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT or not isinstance(header.get("public_key"), str):
        raise FedfraudInputError(f"{path}: not a fedfraud ledger export (its first line names the format "
                                 f"{FORMAT!r}, the origin and the public key)")
    return header


def check_export(path: Path, *, public_key: str | None = None,
                 receipts: Iterable[tuple[str, Any]] = ()) -> ExportCheck:
    """Check the export at ``path`` (and the receipts against it)."""
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise FedfraudInputError(f"{path}: cannot be read ({exc.strerror})") from None
    with handle:
        header = _header(handle.readline(), path)
        key = public_key or header["public_key"]
        verifier = LogVerifier(key, origin=str(header.get("origin") or "") or None)
        receipts = list(receipts)
        indexes = {document["index"] for _, document in receipts
                   if isinstance(document, dict) and isinstance(document.get("index"), int)}
        bodies: dict[int, str] = {}
        leaves = Tree()  # every line as found, for checking receipts even past the first bad entry
        for position, line in enumerate(handle):
            body, checkpoint = _line(line, position)
            verifier.add(position, body, checkpoint)
            leaves.append(leaf_hash(body.encode("utf-8")))
            if position in indexes:
                bodies[position] = body
    # Each receipt under the key that signed its checkpoint, as the log's chain of keys says.
    wanted = _receipts_by_index(receipts, verifier.key_for)
    result = ExportCheck(origin=str(header.get("origin")), public_key=key, key_pinned=public_key is not None,
                         log=verifier.conclude(), rotations=[(size - 1, k) for size, k in verifier.keys[1:]])
    result.receipts_checked = wanted.count
    result.receipt_problems = wanted.problems + _against_log(wanted.valid, bodies, leaves)
    return result


@dataclass
class _Receipts:
    count: int = 0
    indexes: set[int] = field(default_factory=set)
    valid: list[tuple[str, dict[str, Any], Checkpoint]] = field(default_factory=list)
    problems: list[tuple[int, str]] = field(default_factory=list)


def _receipts_by_index(receipts: list[tuple[str, Any]], key_for: Callable[[int], str]) -> _Receipts:
    out = _Receipts(count=len(receipts))
    for name, document in receipts:
        try:
            size = Checkpoint.from_json(document.get("checkpoint")).size if isinstance(document, dict) else 0
            fields, checkpoint = verify_receipt(document, key_for(size))
        except CheckpointError as exc:
            index = document.get("index") if isinstance(document, dict) else None
            out.problems.append((index if isinstance(index, int) else -1, f"receipt {name}: {exc}"))
            continue
        except LedgerError as exc:
            index = exc.index if exc.index is not None else -1
            out.problems.append((index, f"receipt {name} does not hold under the log's key: {exc} "
                                        "(the log was re-signed with another key, or the receipt is forged)"))
            continue
        out.indexes.add(fields["index"])
        out.valid.append((name, {**fields, "entry": document["entry"]}, checkpoint))
    return out


def _against_log(valid: list[tuple[str, dict[str, Any], Checkpoint]], bodies: dict[int, str],
                 leaves: Tree) -> list[tuple[int, str]]:
    problems = []
    for name, fields, checkpoint in valid:
        index = fields["index"]
        if index >= leaves.size:
            problems.append((leaves.size, f"missing: the log ends at {leaves.size} entries, but receipt {name} "
                                          f"proves it held entry {index}"))
        elif bodies.get(index) != fields["entry"]:
            problems.append((index, f"differs from the entry receipt {name} proves"))
        elif checkpoint.size > leaves.size:
            problems.append((leaves.size, f"missing: the log ends before it, but the checkpoint in receipt {name} "
                                          f"proves it held {checkpoint.size} entries"))
        elif leaves.root(checkpoint.size) != checkpoint.root:
            first = min(index, checkpoint.size - 1)
            problems.append((first, f"the log's first {checkpoint.size} entries are not those of the checkpoint "
                                    f"in receipt {name} (an earlier entry was changed, deleted or moved)"))
    return problems


def _line(line: str, position: int) -> tuple[str, Checkpoint]:
    try:
        document = json.loads(line)
        body = document["entry"]
        checkpoint = Checkpoint.from_json(document["checkpoint"])
    except (json.JSONDecodeError, KeyError, TypeError, CheckpointError) as exc:
        # A line that cannot be read still takes its place: the verifier reports it as the first bad.
        return f"<unreadable line: {type(exc).__name__}>", Checkpoint("unreadable", position + 1, b"\0" * 32, 0)
    if not isinstance(body, str):
        return "<unreadable line: entry is not a string>", checkpoint
    return body, checkpoint
