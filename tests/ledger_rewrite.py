"""What an operator holding the database (and perhaps the signing key) can do to the ledger:
rewrite an entry and sign every checkpoint after it again. Shared by the consortium's and the
agents' tampering tests."""

from __future__ import annotations

import json
from collections.abc import Callable

from nacl.signing import SigningKey
from sqlalchemy import Engine, text

from crypto.checkpoint import Checkpoint
from crypto.merkle import Tree, leaf_hash
from crypto.signing import b64encode

ORIGIN = "fedfraud-consortium"


def rewrite_ledger(engine: Engine, target: int, change: Callable[[str], str], key: SigningKey) -> None:
    """Replace entry ``target``'s text by ``change(text)`` and re-sign the whole log with ``key``
    (the roots of every later entry follow), its first entry naming ``key`` as the log's: a log
    consistent in itself, under ``key``."""
    with engine.begin() as connection:
        rows = [dict(r) for r in connection.execute(text("SELECT * FROM ledger_entries ORDER BY seq")).mappings()]
        tree = Tree()
        for row in rows:
            body = change(row["body"]) if row["seq"] == target else row["body"]
            if row["seq"] == 0:
                started = json.loads(body)
                started["details"]["public_key"] = b64encode(bytes(key.verify_key))
                body = json.dumps(started, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            leaf = leaf_hash(body.encode())
            tree.append(leaf)
            signed = Checkpoint(ORIGIN, row["seq"] + 1, tree.root(), row["timestamp_ms"]).signed(key)
            connection.execute(
                text("UPDATE ledger_entries SET body = :b, leaf_hash = :l, root = :r, signature = :sig WHERE seq = :s"),
                {"b": body, "l": leaf.hex(), "r": tree.root().hex(), "sig": signed.signature, "s": row["seq"]})
