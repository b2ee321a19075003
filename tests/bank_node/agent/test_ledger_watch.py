"""A bank agent watching the consortium's ledger over real HTTP: the real aggregator app on a local
port, and the operator's attacks on its database and key file between two polls."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from flask import Flask
from nacl.signing import SigningKey
from sqlalchemy import text

from bank_node.agent.client import ConsortiumClient
from bank_node.agent.ledger_watch import LedgerRewrittenError, LedgerWatch
from bank_node.agent.state import StateDir
from consortium.app import create_app
from consortium.auth import issue_token
from consortium.storage.database import Database, db
from crypto.checkpoint import Checkpoint
from crypto.merkle import Tree, leaf_hash
from schemas.ledger import canonical_entry, endorse_rotation, receipt_document
from tests.bank_node.agent.conftest import FAST_RETRY
from tests.bank_node.agent.fake_consortium import serve
from tests.ledger_rewrite import rewrite_ledger


class Aggregator:
    """The real consortium app on a local port; restartable on the same database and key file."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True)
        self.config = {"DATABASE_URL": f"sqlite:///{root / 'consortium.db'}", "BLOB_DIR": str(root / "blobs"),
                       "LEDGER_KEY_FILE": str(root / "ledger.key")}
        self.app: Flask = create_app(self.config)
        with self.app.app_context():
            self.operator = issue_token(db.session, "operator")
            db.session.commit()
        self.url = ""

    def restart(self) -> None:
        """A new process on the same database and key file (its view of the log starts empty)."""
        Database.engine_for(self.app).dispose()
        self.app = create_app(self.config)

    def enrol(self, bank_id: str) -> str:
        response = self.app.test_client().post("/v1/banks", json={"bank_id": bank_id, "name": bank_id},
                                               headers={"Authorization": f"Bearer {self.operator}"})
        assert response.status_code == 201, response.get_json()
        return str(response.get_json()["token"])

    @property
    def engine(self) -> Any:
        return Database.engine_for(self.app)


@pytest.fixture
def aggregator(tmp_path: Path) -> Iterator[Aggregator]:
    served = Aggregator(tmp_path / "consortium")
    holder = SimpleNamespace(app=None)

    def dispatch(environ: Any, start_response: Any) -> Any:  # follows restarts
        return served.app(environ, start_response)

    holder.app = dispatch
    with serve(holder) as url:  # type: ignore[arg-type]
        served.url = url
        yield served
    Database.engine_for(served.app).dispose()


@pytest.fixture
def watch(aggregator: Aggregator, tmp_path: Path) -> LedgerWatch:
    token = aggregator.enrol("bank-1")
    state = StateDir(tmp_path / "bank-1")
    state.ensure()
    return LedgerWatch(ConsortiumClient(base_url=aggregator.url, token=token, retry=FAST_RETRY), state, "bank-1")


def test_the_watch_pins_the_key_and_follows_a_growing_log(aggregator: Aggregator, watch: LedgerWatch) -> None:
    first = watch.watch()
    assert first is not None and first.size >= 3  # started, bank-1 enrolled, its token
    key = aggregator.app.test_client().get("/v1/ledger/key",
                                           headers={"Authorization": f"Bearer {aggregator.operator}"}).get_json()
    assert watch.public_key == key["public_key"]
    aggregator.enrol("bank-2")
    aggregator.restart()  # another process serves the next poll: the log is the same
    second = watch.watch()
    assert second is not None and second.size == first.size + 2 and watch.checkpoint() == second


def _cover_tracks(aggregator: Aggregator) -> None:
    """The operator also owns the host: it removes the service's own record of the newest size."""
    Path(aggregator.config["LEDGER_KEY_FILE"] + ".head").unlink(missing_ok=True)


ATTACKS: dict[str, Callable[[Aggregator, int], None]] = {
    "an entry rewritten and the log re-signed with the same key":
        lambda agg, n: (rewrite_ledger(agg.engine, _enrolment(agg), lambda b: b.replace("bank-1", "bank-0"),
                                       SigningKey(base64.b64decode(Path(agg.config["LEDGER_KEY_FILE"]).read_bytes()))),
                        _cover_tracks(agg)),
    "the log re-signed with a new key":
        lambda agg, n: (rewrite_ledger(agg.engine, 1, lambda b: b, new := SigningKey.generate()),
                        Path(agg.config["LEDGER_KEY_FILE"]).write_bytes(base64.b64encode(bytes(new))),
                        _cover_tracks(agg)),
    "the newest entries deleted":
        lambda agg, n: (_sql(agg, "DELETE FROM ledger_entries WHERE seq >= :n; UPDATE ledger_head SET size = :n",
                             n=n - 1), _cover_tracks(agg)),
    "an entry changed without the key":
        lambda agg, n: _sql(agg, "UPDATE ledger_entries SET body = replace(body, 'bank-1', 'bank-0') WHERE seq = :s",
                            s=_enrolment(agg)),
}


def _enrolment(aggregator: Aggregator) -> int:
    """The entry of bank-1's enrolment."""
    with aggregator.engine.connect() as connection:
        return int(connection.execute(text("SELECT seq FROM ledger_entries WHERE event = 'bank.enrolled' "
                                           "AND bank_id = 'bank-1'")).scalar_one())


def _sql(aggregator: Aggregator, statements: str, **params: Any) -> None:
    with aggregator.engine.begin() as connection:
        for statement in statements.split(";"):
            connection.execute(text(statement), {k: v for k, v in params.items() if f":{k}" in statement})


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_an_operator_rewriting_the_log_between_two_polls_stops_the_agent(
    aggregator: Aggregator, watch: LedgerWatch, attack: str
) -> None:
    seen = watch.watch()
    assert seen is not None
    enrolment = _enrolment(aggregator)
    aggregator.enrol("bank-2")  # the log grows as usual ...
    ATTACKS[attack](aggregator, seen.size)  # ... and is rewritten behind the service
    aggregator.restart()
    with pytest.raises(LedgerRewrittenError) as raised:
        watch.watch()
    expected = {
        "an entry rewritten and the log re-signed with the same key": "rewritten or forked",
        "the log re-signed with a new key": "signature",
        "the newest entries deleted": "shrank",
        "an entry changed without the key": f"broken at entry {enrolment}",
    }[attack]
    assert expected in str(raised.value), str(raised.value)
    assert watch.checkpoint() == seen  # what the bank accepted stays its evidence


# ------------------------------------------------------------------------------------ receipts

def _signed_log(key: SigningKey, bodies: list[bytes]) -> tuple[Tree, list[Checkpoint]]:
    tree, checkpoints = Tree(), []
    for body in bodies:
        tree.append(leaf_hash(body))
        checkpoints.append(Checkpoint("fedfraud-consortium", tree.size, tree.root(), tree.size).signed(key))
    return tree, checkpoints


def test_receipts_are_kept_only_when_they_prove_this_banks_own_contribution(tmp_path: Path) -> None:
    from datetime import datetime

    key = SigningKey.generate()
    state = StateDir(tmp_path / "bank-1")
    state.ensure()
    watch = LedgerWatch(ConsortiumClient(base_url="http://127.0.0.1:9", token="token"), state, "bank-1")
    watch.pin(base64.b64encode(bytes(key.verify_key)).decode(), "fedfraud-consortium")
    payload = b"ciphertext"
    mine = canonical_entry(1, "contribution.accepted", datetime(2026, 12, 2), bank_id="bank-1", run_id="run-1",
                           details={"round_key": "r/n3", "payload_sha256": hashlib.sha256(payload).hexdigest()})
    bodies = [canonical_entry(0, "ledger.started", datetime(2026, 12, 2)), mine]
    tree, checkpoints = _signed_log(key, bodies)
    receipt = receipt_document(mine, 1, tree.inclusion_proof(1, 2), checkpoints[1])
    watch.keep("run-1", "r/n3", payload, receipt)
    kept = json.loads((state.root / "receipts" / "000000000001.json").read_text())
    assert kept == receipt

    for run_id, round_key, data, why in (("run-2", "r/n3", payload, "another contribution"),
                                         ("run-1", "r/n4", payload, "another contribution"),
                                         ("run-1", "r/n3", b"other bytes", "another contribution")):
        with pytest.raises(LedgerRewrittenError, match=why):
            watch.keep(run_id, round_key, data, receipt)
    with pytest.raises(LedgerRewrittenError, match="without a ledger receipt"):
        watch.keep("run-1", "r/n3", payload, None)
    other = SigningKey.generate()
    _, foreign = _signed_log(other, bodies)
    with pytest.raises(LedgerRewrittenError, match="does not hold"):
        watch.keep("run-1", "r/n3", payload, {**receipt, "checkpoint": foreign[1].to_json()})
    with pytest.raises(LedgerRewrittenError, match="refusing to replace"):
        watch.pin(base64.b64encode(bytes(other.verify_key)).decode(), "fedfraud-consortium")


def test_a_private_runs_spend_recorded_in_the_banks_name_must_be_the_one_it_made(tmp_path: Path) -> None:
    """The consortium's operator writes the ledger that compliance staff read. In a private run it
    could record less than a bank spent (a smaller epsilon, fewer releases, more noise than drawn)
    or nothing at all; the bank's agent checks the receipt of that entry, which comes with every
    contribution, against the setting its own noise was drawn for, and stops otherwise."""
    from datetime import datetime

    from schemas.privacy import run_privacy

    key = SigningKey.generate()
    state = StateDir(tmp_path / "bank-1")
    state.ensure()
    watch = LedgerWatch(ConsortiumClient(base_url="http://127.0.0.1:9", token="token"), state, "bank-1")
    watch.pin(base64.b64encode(bytes(key.verify_key)).decode(), "fedfraud-consortium")
    privacy = run_privacy("xgboost", {"n_trees": 10, "max_depth": 3, "dp_epsilon": 2.0})
    assert privacy is not None
    payload = b"ciphertext"
    at = datetime(2026, 12, 3)

    def log_with(spent: dict[str, Any], *, bank_id: str = "bank-1", round_key: str = "r/n3") -> tuple[Any, Any]:
        entries = [canonical_entry(0, "ledger.started", at),
                   canonical_entry(1, "privacy.spent", at, bank_id=bank_id, run_id="run-1", details=spent),
                   canonical_entry(2, "contribution.accepted", at, bank_id="bank-1", run_id="run-1", details={
                       "round_key": round_key, "payload_sha256": hashlib.sha256(payload).hexdigest()})]
        tree, checkpoints = _signed_log(key, entries)
        return (receipt_document(entries[2], 2, tree.inclusion_proof(2, 3), checkpoints[2]),
                receipt_document(entries[1], 1, tree.inclusion_proof(1, 3), checkpoints[2]))

    honest = {**privacy.to_json(), "round_key": "r/n3"}
    receipt, spent = log_with(honest)
    watch.keep("run-1", "r/n3", payload, receipt, privacy_receipt=spent, privacy=privacy)
    assert json.loads((state.root / "receipts" / "000000000001.json").read_text()) == spent  # kept, confirmed at polls

    understated = {
        "a smaller epsilon": {**honest, "epsilon": 0.5},
        "fewer releases": {**honest, "releases": privacy.releases // 2},
        "more noise than was drawn": {**honest, "noise_multiplier": privacy.multiplier * 4},
        "the gate left out": {k: v for k, v in honest.items() if not k.startswith(("gate_", "total_"))},
    }
    for what, recorded in understated.items():
        receipt, spent = log_with(recorded)
        with pytest.raises(LedgerRewrittenError, match="not what it spent"):
            watch.keep("run-1", "r/n3", payload, receipt, privacy_receipt=spent, privacy=privacy)
        assert what
    # What an honest consortium on another build may record: multipliers calibrated a hair apart,
    # another label of the accounting method, a field this agent does not know, more spend.
    for recorded in ({**honest, "noise_multiplier": privacy.multiplier * (1 + 1e-6)},
                     {**honest, "accounting": "Renyi DP (dp-accounting 0.5)", "note": "later version"},
                     {**honest, "epsilon": 2.5, "releases": privacy.releases + 1}):
        receipt, spent = log_with(recorded)
        watch.keep("run-1", "r/n3", payload, receipt, privacy_receipt=spent, privacy=privacy)
    receipt, spent = log_with(honest)
    with pytest.raises(LedgerRewrittenError, match="without the receipt of the ledger entry recording its privacy"):
        watch.keep("run-1", "r/n3", payload, receipt, privacy_receipt=None, privacy=privacy)
    with pytest.raises(LedgerRewrittenError, match="without differential privacy"):
        watch.keep("run-1", "r/n3", payload, receipt, privacy_receipt=spent, privacy=None)
    receipt, spent = log_with(honest, bank_id="bank-2")  # another bank's entry handed over
    with pytest.raises(LedgerRewrittenError, match="records another entry"):
        watch.keep("run-1", "r/n3", payload, receipt, privacy_receipt=spent, privacy=privacy)
    receipt, spent = log_with(honest, round_key="e1/r/n3")  # the run started over: epoch 1 needs its own entry
    with pytest.raises(LedgerRewrittenError, match="records another entry"):
        watch.keep("run-1", "e1/r/n3", payload, receipt, privacy_receipt=spent, privacy=privacy)
    other = SigningKey.generate()
    _, foreign = _signed_log(other, [canonical_entry(0, "ledger.started", at)])
    receipt, spent = log_with(honest)
    with pytest.raises(LedgerRewrittenError, match="privacy receipt does not hold"):
        watch.keep("run-1", "r/n3", payload, receipt, privacy_receipt={**spent, "checkpoint": foreign[0].to_json()},
                   privacy=privacy)


def test_a_private_run_is_not_proposed_until_every_epochs_spend_was_checked(tmp_path: Path) -> None:
    """The operator could answer every contribution of an epoch as a replay (409, no receipt) while
    using it in the sum: before proposing, the agent requires a checked privacy receipt for each
    epoch it sent contributions in; a genuine replay (after a restart) brings that receipt back
    in its 409, and what was checked survives a restart of the agent."""
    from datetime import datetime

    from schemas.privacy import run_privacy

    key = SigningKey.generate()
    state = StateDir(tmp_path / "bank-1")
    state.ensure()
    client = ConsortiumClient(base_url="http://127.0.0.1:9", token="token")
    watch = LedgerWatch(client, state, "bank-1")
    watch.pin(base64.b64encode(bytes(key.verify_key)).decode(), "fedfraud-consortium")
    privacy = run_privacy("logreg", {"dp_epsilon": 2.0}, gate=False)
    assert privacy is not None
    at = datetime(2026, 12, 3)
    entries = [canonical_entry(0, "ledger.started", at)] + [
        canonical_entry(1 + epoch, "privacy.spent", at, bank_id="bank-1", run_id="run-1",
                        details={**privacy.to_json(), "round_key": key_, **({"epoch": epoch} if epoch else {})})
        for epoch, key_ in ((0, "r/n3"), (1, "e1/r/n3"))]
    tree, checkpoints = _signed_log(key, entries)
    receipts = [receipt_document(entries[i], i, tree.inclusion_proof(i, 3), checkpoints[2]) for i in (1, 2)]

    with pytest.raises(LedgerRewrittenError, match=r"epoch\(s\) 0, 1"):
        watch.require_privacy("run-1", {0, 1})  # every contribution answered 409 without a receipt
    watch.keep_privacy("run-1", "r/n3", receipts[0], privacy)  # a replay's 409 with the receipt
    with pytest.raises(LedgerRewrittenError, match=r"epoch\(s\) 1 "):
        watch.require_privacy("run-1", {0, 1})
    with pytest.raises(LedgerRewrittenError, match="records another entry"):
        watch.keep_privacy("run-1", "e1/r/n3", receipts[0], privacy)  # epoch 0's entry for epoch 1
    watch.keep_privacy("run-1", "e1/r2/n3", receipts[1], privacy)
    LedgerWatch(client, state, "bank-1").require_privacy("run-1", {0, 1})  # after a restart too
    with pytest.raises(LedgerRewrittenError):
        watch.require_privacy("run-2", {0})


def test_a_receipt_from_a_fork_is_caught_at_the_next_poll(aggregator: Aggregator, watch: LedgerWatch) -> None:
    """The operator, holding the key, hands the bank a receipt from one log (fork A, where the
    bank's contribution is entry N) and serves another to its polls (fork B, where entry N is
    something else): the next poll asks for the receipted entry in the log it accepts, and stops."""
    from datetime import datetime

    seen = watch.watch()
    assert seen is not None
    key = SigningKey(base64.b64decode(Path(aggregator.config["LEDGER_KEY_FILE"]).read_bytes()))
    with aggregator.engine.connect() as connection:
        leaves = [bytes.fromhex(h) for h in connection.execute(text("SELECT leaf_hash FROM ledger_entries ORDER BY seq"))
                  .scalars()]
    payload = b"ciphertext"
    mine = canonical_entry(len(leaves), "contribution.accepted", datetime(2026, 12, 2), bank_id="bank-1",
                           run_id="run-1", details={"round_key": "r/n3",
                                                    "payload_sha256": hashlib.sha256(payload).hexdigest()})
    fork = Tree([*leaves, leaf_hash(mine)])
    signed = Checkpoint("fedfraud-consortium", fork.size, fork.root(), 10**13).signed(key)
    receipt = receipt_document(mine, len(leaves), fork.inclusion_proof(len(leaves)), signed)
    watch.keep("run-1", "r/n3", payload, receipt)  # a valid receipt, on its own
    aggregator.enrol("bank-2")  # the log the bank polls grows otherwise
    with pytest.raises(LedgerRewrittenError, match=f"entry {len(leaves)}, this bank's receipted contribution"):
        watch.watch()


def test_a_key_read_out_of_band_is_pinned_before_the_first_poll(aggregator: Aggregator, watch: LedgerWatch) -> None:
    """A bank that pins the consortium's key from a letter, not from the consortium's first
    answer, refuses a log signed by any other key from its first poll on."""
    impostor = base64.b64encode(bytes(SigningKey.generate().verify_key)).decode()
    watch.pin(impostor, origin="")
    with pytest.raises(LedgerRewrittenError, match="signature"):
        watch.watch()
    real = base64.b64encode(bytes(SigningKey(base64.b64decode(
        Path(aggregator.config["LEDGER_KEY_FILE"]).read_bytes())).verify_key)).decode()
    watch.state.write_secret("ledger.json", b"{}")
    watch.pin(real, origin="")
    accepted = watch.watch()
    assert accepted is not None and watch._load()["origin"] == "fedfraud-consortium"
    with pytest.raises(LedgerRewrittenError, match="refusing to replace"):
        watch.pin(impostor, origin="")


# ------------------------------------------------------------------------------------ key rotation

def _key_of(aggregator: Aggregator) -> str:
    held = SigningKey(base64.b64decode(Path(aggregator.config["LEDGER_KEY_FILE"]).read_bytes()))
    return base64.b64encode(bytes(held.verify_key)).decode()


def test_the_watch_follows_a_key_rotation_and_every_process_signs_with_the_new_key(
    aggregator: Aggregator, watch: LedgerWatch
) -> None:
    """The operator rotates the ledger's key while two processes serve (the other read the log
    under the old key): the other signs its next entry with the new key, and the bank's agent
    follows the rotation from the key it pinned to the new one, keeping the log it accepted."""
    from consortium.ledger import rotate_key

    seen = watch.watch()
    assert seen is not None
    old = watch.public_key
    other = create_app(aggregator.config)  # a second worker, which read the log before the rotation
    assert other.test_client().get("/v1/ledger/checkpoint", headers={
        "Authorization": f"Bearer {aggregator.operator}"}).status_code == 200
    with aggregator.app.app_context():
        _, new = rotate_key(db.session)
    response = other.test_client().post("/v1/banks", json={"bank_id": "bank-2", "name": "bank-2"},
                                        headers={"Authorization": f"Bearer {aggregator.operator}"})
    assert response.status_code == 201, response.get_json()  # signed by the key it read again
    Database.engine_for(other).dispose()
    assert _key_of(aggregator) == new
    accepted = watch.watch()
    assert accepted is not None and accepted.size > seen.size + 1
    accepted.verify(new)
    record = watch._load()
    assert watch.public_key == new != old and [r["public_key"] for r in record["rotations"]] == [new]
    aggregator.enrol("bank-3")
    assert watch.watch() is not None  # and goes on under the new key
    # A receipt under a key the log never rotated to is refused once the log was looked at.
    impostor = SigningKey.generate()
    with aggregator.app.app_context():
        from consortium import ledger as ledger_module

        seq = ledger_module.record(db.session, "contribution.accepted", bank_id="bank-1", run_id="run-1",
                                   details={"round_key": "r/n3", "payload_sha256": hashlib.sha256(b"p").hexdigest()})
        db.session.commit()
        honest = ledger_module.receipt(db.session, seq)
    forged = Checkpoint.from_json(honest["checkpoint"])
    forged = Checkpoint(forged.origin, forged.size + 5, forged.root, forged.timestamp_ms).signed(impostor)
    with pytest.raises(LedgerRewrittenError, match="does not hold"):
        watch.keep("run-1", "r/n3", b"p", {**honest, "checkpoint": forged.to_json()})
    watch.keep("run-1", "r/n3", b"p", honest)


def _forge_rotation(aggregator: Aggregator) -> int:
    """What the operator without the log's key can do: put its own key in the key file, and a
    rotation entry naming it, endorsed by a key of its own, in the database."""
    evil = SigningKey.generate()
    evil_public = base64.b64encode(bytes(evil.verify_key)).decode()
    with aggregator.engine.begin() as connection:
        rows = connection.execute(text("SELECT seq, leaf_hash, timestamp_ms FROM ledger_entries ORDER BY seq")).all()
        tree = Tree()
        for row in rows:
            tree.append(bytes.fromhex(row.leaf_hash))
        seq = len(rows)
        details = endorse_rotation(SigningKey.generate(), "fedfraud-consortium", seq, tree.root(), evil_public)
        details["previous_key"] = _key_of(aggregator)
        at = datetime(2026, 12, 3, 12, 0, 0)
        body = canonical_entry(seq, "ledger.key_rotated", at, details=details)
        tree.append(leaf_hash(body))
        signed = Checkpoint("fedfraud-consortium", seq + 1, tree.root(), rows[-1].timestamp_ms + 1).signed(evil)
        connection.execute(text(
            "INSERT INTO ledger_entries (seq, event, at, body, leaf_hash, root, timestamp_ms, signature) "
            "VALUES (:seq, 'ledger.key_rotated', :at, :body, :leaf, :root, :ts, :sig)"),
            {"seq": seq, "at": at, "body": body.decode(), "leaf": leaf_hash(body).hex(), "root": tree.root().hex(),
             "ts": signed.timestamp_ms, "sig": signed.signature})
        connection.execute(text("UPDATE ledger_head SET size = :n"), {"n": seq + 1})
    Path(aggregator.config["LEDGER_KEY_FILE"]).write_bytes(base64.b64encode(bytes(evil)))
    return seq


def test_a_rotation_the_pinned_key_did_not_endorse_stops_the_service_and_the_agent(
    aggregator: Aggregator, watch: LedgerWatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key put in by whoever holds the database and the host but not the log's key: the service
    finds the rotation unendorsed and changes nothing more; a consortium whose code was changed
    to serve it anyway is caught by the agent itself, which stops."""
    import consortium.ledger

    seen = watch.watch()
    assert seen is not None
    forged = _forge_rotation(aggregator)
    aggregator.restart()
    verification = aggregator.app.test_client().get(
        "/v1/ledger/verification", headers={"Authorization": f"Bearer {aggregator.operator}"}).get_json()
    # From the key the service now holds (the operator's), nothing of the log holds; the log
    # itself breaks at the forged rotation, which the service names when it refuses changes.
    assert verification["first_bad"] == 0 and f"entry {forged}" in verification["problem"], verification
    assert "not endorsed" in verification["problem"]
    response = aggregator.app.test_client().post("/v1/banks", json={"bank_id": "bank-2", "name": "bank-2"},
                                                 headers={"Authorization": f"Bearer {aggregator.operator}"})
    assert response.status_code == 503 and f"entry {forged}" in response.get_json()["message"]

    from schemas.ledger import key_named

    def unchecked(fields: Any, **_: Any) -> str | None:
        return key_named(fields, trusted=True)

    monkeypatch.setattr(consortium.ledger, "key_named", unchecked)  # a service that looks away
    aggregator.restart()
    with pytest.raises(LedgerRewrittenError, match="cannot trust"):
        watch.watch()
    assert watch.checkpoint() == seen and watch.public_key != _key_of(aggregator)


def _write(app: Flask, operator: str, bank_id: str) -> Any:
    return app.test_client().post("/v1/banks", json={"bank_id": bank_id, "name": bank_id},
                                  headers={"Authorization": f"Bearer {operator}"})


def test_a_rotation_cut_short_loses_no_key_and_the_next_one_completes_it(
    aggregator: Aggregator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rotating process stops between the rotation's commit and the new key's move into the
    key file, or cannot tell whether its commit went through: the service signs on with the staged
    key, and rotating again completes the first rotation before making the second."""
    import os

    import consortium.ledger as ledger_module
    from consortium.ledger import rotate_key, staged_key_path

    staged = staged_key_path(Path(aggregator.config["LEDGER_KEY_FILE"]))
    real_replace = os.replace

    def crash(*_: Any) -> None:
        raise OSError("the process stopped here")

    monkeypatch.setattr(ledger_module.os, "replace", crash)
    with aggregator.app.app_context(), pytest.raises(OSError):
        rotate_key(db.session)
    monkeypatch.setattr(ledger_module.os, "replace", real_replace)
    assert staged.exists()
    aggregator.restart()
    assert _write(aggregator.app, aggregator.operator, "bank-2").status_code == 201  # signed by the staged key

    aggregator.restart()
    with aggregator.app.app_context():
        real_commit = db.session.commit

        def commit_then_fail() -> None:  # committed, but the answer was lost
            real_commit()
            raise OSError("connection lost after the commit")

        monkeypatch.setattr(db.session, "commit", commit_then_fail)
        with pytest.raises(OSError):
            rotate_key(db.session)
        monkeypatch.undo()
    assert staged.exists()  # the outcome is the log's: the staged key stays
    aggregator.restart()
    assert _write(aggregator.app, aggregator.operator, "bank-3").status_code == 201
    with aggregator.app.app_context():
        _, newest = rotate_key(db.session)
    assert _key_of(aggregator) == newest and not staged.exists()
    assert _write(aggregator.app, aggregator.operator, "bank-4").status_code == 201
    verification = aggregator.app.test_client().get(
        "/v1/ledger/verification", headers={"Authorization": f"Bearer {aggregator.operator}"}).get_json()
    assert verification["ok"], verification


def test_a_rotation_completed_by_another_process_first_is_no_failure(
    aggregator: Aggregator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that signs between the rotation's commit and the key's move moves the staged key
    in itself; the rotation still ends well."""
    import os

    import consortium.ledger as ledger_module
    from consortium.ledger import rotate_key

    other = create_app(aggregator.config)
    assert _write(other, aggregator.operator, "bank-2").status_code == 201
    real_replace = os.replace

    def another_worker_first(source: Any, target: Any) -> None:
        monkeypatch.setattr(ledger_module.os, "replace", real_replace)
        assert _write(other, aggregator.operator, "bank-3").status_code == 201  # moves the staged key in
        real_replace(source, target)

    monkeypatch.setattr(ledger_module.os, "replace", another_worker_first)
    with aggregator.app.app_context():
        _, new = rotate_key(db.session)
    Database.engine_for(other).dispose()
    assert _key_of(aggregator) == new
    assert _write(aggregator.app, aggregator.operator, "bank-4").status_code == 201


def test_a_log_re_signed_under_a_key_the_service_does_not_hold_is_broken_at_its_first_entry(
    aggregator: Aggregator,
) -> None:
    """Whoever holds the database but not the key re-signs the log under a key of its own, its
    first entry naming that key: a new process of the service finds the log broken at entry 0
    (it does not serve it, nor that key for banks to pin)."""
    aggregator.enrol("bank-2")
    rewrite_ledger(aggregator.engine, 1, lambda body: body, SigningKey.generate())
    _cover_tracks(aggregator)
    aggregator.restart()
    client = aggregator.app.test_client()
    headers = {"Authorization": f"Bearer {aggregator.operator}"}
    served = client.get("/v1/ledger/key", headers=headers)
    assert served.status_code == 503 and served.get_json()["ledger_broken_at"] == 0
    assert client.get("/v1/ledger/checkpoint", headers=headers).status_code == 503


def test_a_privacy_receipt_from_before_a_rotation_still_checks_after_it(
    aggregator: Aggregator, watch: LedgerWatch
) -> None:
    """A private run across a rotation: the receipt of the bank's spend, recorded before it and
    given again with every later contribution of the epoch, keeps the old key's checkpoint."""
    from consortium import ledger as ledger_module
    from schemas.privacy import run_privacy

    privacy = run_privacy("logreg", {"dp_epsilon": 2.0}, gate=False)
    assert privacy is not None
    with aggregator.app.app_context():
        seq = ledger_module.record(db.session, "privacy.spent", bank_id="bank-1", run_id="run-1",
                                   details={**privacy.to_json(), "round_key": "logreg/round-0/n3"})
        db.session.commit()
        receipt = ledger_module.receipt(db.session, seq)
    assert watch.watch() is not None
    watch.keep_privacy("run-1", "logreg/round-0/n3", receipt, privacy)
    with aggregator.app.app_context():
        ledger_module.rotate_key(db.session)
    aggregator.enrol("bank-3")
    assert watch.watch() is not None  # followed
    watch.keep_privacy("run-1", "logreg/round-1/n3", receipt, privacy)  # checked under the key of its time


def test_a_rotation_that_cannot_be_followed_now_is_tried_again_not_taken_for_a_rewrite(
    aggregator: Aggregator, watch: LedgerWatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bank_node.agent.errors import UnavailableError
    from consortium import ledger as ledger_module

    assert watch.watch() is not None
    with aggregator.app.app_context():
        ledger_module.rotate_key(db.session)
        seq = ledger_module.record(db.session, "contribution.accepted", bank_id="bank-1", run_id="run-1",
                                   details={"round_key": "r/n3", "payload_sha256": hashlib.sha256(b"p").hexdigest()})
        db.session.commit()
        receipt = ledger_module.receipt(db.session, seq)

    def down(*_: Any, **__: Any) -> Any:
        raise UnavailableError("503 for a moment", status=503)

    with monkeypatch.context() as patched:
        patched.setattr(watch.client, "ledger_checkpoint", down)
        with pytest.raises(UnavailableError):
            watch.keep("run-1", "r/n3", b"p", receipt)
    watch.keep("run-1", "r/n3", b"p", receipt)  # once the ledger answers: followed, checked, kept
    assert watch.watch() is not None  # and confirmed in the log at the next poll


def test_two_rotations_at_once_both_hold_and_the_service_signs_on(aggregator: Aggregator) -> None:
    """Two operators (two processes) rotate at the same moment: one waits for the other, each
    endorses from the key then in force, and the key file ends with the newest key."""
    import threading

    from consortium.ledger import rotate_key

    other = create_app(aggregator.config)
    results: dict[str, Any] = {}

    def rotate(name: str, app: Flask) -> None:
        with app.app_context():
            try:
                results[name] = rotate_key(db.session)
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                results[name] = exc

    threads = [threading.Thread(target=rotate, args=(name, app))
               for name, app in (("first", aggregator.app), ("second", other))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    Database.engine_for(other).dispose()
    assert all(isinstance(result, tuple) for result in results.values()), results
    pairs = sorted(results.values())
    newest = next(new for old, new in pairs if all(new != o for o, _ in pairs))
    assert {new for _, new in pairs} & {old for old, _ in pairs}  # the second endorsed from the first's key
    assert _key_of(aggregator) == newest
    assert _write(aggregator.app, aggregator.operator, "bank-2").status_code == 201
    verification = aggregator.app.test_client().get(
        "/v1/ledger/verification", headers={"Authorization": f"Bearer {aggregator.operator}"}).get_json()
    assert verification["ok"], verification


def _proof_requests(aggregator: Aggregator, *, without_batches: bool = False) -> list[str]:
    """The proof requests the served app gets from now on; ``without_batches``: it answers the
    batch route 404, as a consortium of a version without it does."""
    seen: list[str] = []
    inner = aggregator.app.wsgi_app

    def counting(environ: Any, start_response: Any) -> Any:
        path = environ["PATH_INFO"]
        if path.startswith("/v1/ledger/proofs/inclusion"):
            seen.append(f"{environ['REQUEST_METHOD']} {path}")
            if without_batches and path == "/v1/ledger/proofs/inclusions":
                start_response("404 NOT FOUND", [("Content-Type", "application/json")])
                return [b'{"code": 404, "status": "Not Found", "message": "no such route"}']
        return inner(environ, start_response)

    aggregator.app.wsgi_app = counting  # type: ignore[method-assign]
    return seen


def _receipts_since_the_last_look(aggregator: Aggregator, watch: LedgerWatch, n_banks: int) -> list[int]:
    """Entries added after the watch's last look, each kept as a receipt (as contributions' are)."""
    for number in range(n_banks):
        aggregator.enrol(f"bank-x{number}")
    client = aggregator.app.test_client()
    size = client.get("/v1/ledger/checkpoint", headers={"Authorization": f"Bearer {aggregator.operator}"}).get_json()["size"]
    accepted = watch.checkpoint()
    assert accepted is not None
    indices = list(range(accepted.size, size))
    for index in indices:
        receipt = client.get(f"/v1/ledger/entries/{index}",
                             headers={"Authorization": f"Bearer {aggregator.operator}"}).get_json()
        watch._store(index, receipt)
    return indices


@pytest.mark.parametrize("without_batches", [False, True], ids=["one request", "older consortium: one a receipt"])
def test_the_receipts_since_the_last_look_are_confirmed_in_one_request(
    aggregator: Aggregator, watch: LedgerWatch, without_batches: bool
) -> None:
    assert watch.watch() is not None
    indices = _receipts_since_the_last_look(aggregator, watch, 6)  # two entries a bank: 12 receipts
    assert len(indices) == 12
    seen = _proof_requests(aggregator, without_batches=without_batches)
    accepted = watch.watch()
    assert accepted is not None and accepted.size == indices[-1] + 1
    if without_batches:
        assert seen == ["POST /v1/ledger/proofs/inclusions"] + ["GET /v1/ledger/proofs/inclusion"] * 12
    else:
        assert seen == ["POST /v1/ledger/proofs/inclusions"]
    assert watch._waiting(accepted.size) == []  # confirmed: not asked again at the next look
    assert watch.watch() is not None and seen.count("POST /v1/ledger/proofs/inclusions") == 1


def test_more_receipts_than_one_request_takes_are_asked_in_several(
    aggregator: Aggregator, watch: LedgerWatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bank_node.agent.ledger_watch as module

    monkeypatch.setattr(module, "MAX_PROOFS_A_REQUEST", 5)
    assert watch.watch() is not None
    indices = _receipts_since_the_last_look(aggregator, watch, 6)
    seen = _proof_requests(aggregator)
    accepted = watch.watch()
    assert accepted is not None and accepted.size == indices[-1] + 1
    assert seen == ["POST /v1/ledger/proofs/inclusions"] * 3  # 12 receipts, 5 a request


def _swap_two(document: dict[str, Any], older: dict[str, Any]) -> None:
    first, second = document["proofs"][:2]
    first["proof"], second["proof"] = second["proof"], first["proof"]


def _drop_one(document: dict[str, Any], older: dict[str, Any]) -> None:
    document["proofs"].pop()


def _relabel(document: dict[str, Any], older: dict[str, Any]) -> None:
    first, second = document["proofs"][:2]
    first["index"], second["index"] = second["index"], first["index"]


def _older_checkpoint(document: dict[str, Any], older: dict[str, Any]) -> None:
    document["checkpoint"] = older  # signed by the ledger's key, of a shorter log


@pytest.mark.parametrize("tamper", [_swap_two, _drop_one, _relabel, _older_checkpoint],
                         ids=["two proofs swapped", "one proof left out", "two proofs relabelled",
                              "another checkpoint"])
def test_a_batch_answer_that_does_not_prove_each_entry_stops_the_agent(
    aggregator: Aggregator, watch: LedgerWatch, tamper: Callable[[dict[str, Any], dict[str, Any]], None]
) -> None:
    """The aggregator's host rewrites the batch answer: proofs swapped, one left out, labelled with
    another entry, or given under a validly signed checkpoint of a shorter log. Every proof must
    lead from its own receipted entry to the checkpoint the bank just accepted: the agent stops,
    naming the first entry it could not confirm."""
    accepted = watch.watch()
    assert accepted is not None
    indices = _receipts_since_the_last_look(aggregator, watch, 2)
    client = aggregator.app.test_client()
    operator = {"Authorization": f"Bearer {aggregator.operator}"}
    older = client.get(f"/v1/ledger/proofs/inclusion?index=0&size={indices[-1]}", headers=operator).get_json()
    inner = aggregator.app.wsgi_app

    def tampering(environ: Any, start_response: Any) -> Any:
        if environ["PATH_INFO"] != "/v1/ledger/proofs/inclusions":
            return inner(environ, start_response)
        document = json.loads(b"".join(inner(environ, lambda *_: None)))
        tamper(document, older["checkpoint"])
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(document).encode()]

    aggregator.app.wsgi_app = tampering  # type: ignore[method-assign]
    with pytest.raises(LedgerRewrittenError, match=f"entry {indices[0]}, this bank's receipted contribution"):
        watch.watch()
    assert watch.checkpoint() == accepted  # the newer log was not accepted
