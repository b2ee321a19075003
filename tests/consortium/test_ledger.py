"""The contribution ledger: every state change is an entry committed with it, each entry carries the
signed checkpoint of the log up to it, and tampering with the stored log (by anyone who does not
hold the signing key, or who re-signs with another) is detected and the first bad entry named: by
the service's own check, by a process starting on the database, by ``fedfraud ledger verify``
on an export, and from the banks' receipts."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from flask import Flask
from nacl.signing import SigningKey
from sqlalchemy import text

import crypto
from consortium.app import create_app
from consortium.storage.database import Database
from crypto.checkpoint import Checkpoint
from crypto.merkle import Tree, leaf_hash, verify_inclusion
from fedfraud.cli import main
from schemas.ledger import LedgerError, canonical_entry, verify_receipt
from crypto.signing import contribution_message, sign
from tests.consortium.conftest import Consortium, bearer
from tests.ledger_rewrite import rewrite_ledger


def _run_to_publication(consortium: Consortium, he: crypto.HEScheme) -> tuple[str, list[dict[str, Any]]]:
    """One run: a released round of three contributions, three proposals, a published model.
    Returns the run id and the receipts the banks got."""
    run_id = consortium.open_run()["run_id"]
    receipts = []
    for bank in consortium.banks.values():
        response = bank.contribute(run_id, "r/n3", he.encrypt(np.arange(3.0)))
        assert response.status_code == 201, response.get_json()
        receipts.append(response.get_json()["receipt"])
    body = json.dumps({"learner": {"trees": ["ledger"]}}).encode()
    for bank in consortium.banks.values():
        assert bank.propose(run_id, body).status_code in (200, 201)
    assert consortium.run(run_id)["state"] == "completed"
    return run_id, receipts


def _entries(consortium: Consortium, token: str, **query: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    after = -1
    while True:
        page = consortium.client.get("/v1/ledger/entries", query_string={**query, "after": after, "limit": 7},
                                     headers=bearer(token))
        assert page.status_code == 200, page.get_json()
        document = page.get_json()
        found += document["entries"]
        if document["next_after"] is None:
            assert len(found) == document["total"]
            return found
        after = document["next_after"]


def _public_key(consortium: Consortium) -> str:
    return str(consortium.client.get("/v1/ledger/key", headers=bearer(consortium.operator)).get_json()["public_key"])


def test_every_state_change_of_a_run_is_an_entry_and_the_banks_get_receipts(
    consortium: Consortium, he_key: crypto.HEScheme, compliance_token: str
) -> None:
    run_id, receipts = _run_to_publication(consortium, he_key)
    entries = _entries(consortium, compliance_token)
    events = [e["event"] for e in entries]
    assert events[0] == "ledger.started" and [e["index"] for e in entries] == list(range(len(entries)))
    for expected in ("bank.enrolled", "bank.keys_registered", "token.issued", "roster.signed", "key.published",
                     "key.share_posted", "run.opened"):
        assert expected in events
    tail = events[events.index("run.opened"):]
    assert tail == ["run.opened"] + ["contribution.accepted"] * 3 + ["round.released"] + ["proposal.received"] * 3 \
        + ["model.published", "model.current", "run.completed"]
    released = next(e for e in entries if e["event"] == "round.released")
    accepted = [e for e in entries if e["event"] == "contribution.accepted"]
    assert released["details"]["contributions"] == [
        {"bank_id": e["bank_id"], "payload_sha256": e["details"]["payload_sha256"]} for e in accepted]
    published = next(e for e in entries if e["event"] == "model.published")
    assert published["run_id"] == run_id and published["model_version"] == 1
    assert published["details"]["banks"] == ["bank-1", "bank-2", "bank-3"]

    # Each bank's receipt proves its own entry under the pinned key, and nothing else.
    key = _public_key(consortium)
    for bank_id, receipt in zip(("bank-1", "bank-2", "bank-3"), receipts, strict=True):
        fields, checkpoint = verify_receipt(receipt, key)
        assert fields["bank_id"] == bank_id and fields["event"] == "contribution.accepted"
        assert fields["details"]["round_key"] == "r/n3" and checkpoint.size == fields["index"] + 1
        assert fields["details"]["signature"]  # the bank's own signature over the payload
        forged = {**receipt, "entry": receipt["entry"].replace(bank_id, "bank-9")}
        with pytest.raises(LedgerError):
            verify_receipt(forged, key)
        with pytest.raises(LedgerError, match="signature"):
            verify_receipt(receipt, base64.b64encode(bytes(SigningKey.generate().verify_key)).decode())

    # The service's own check, and the filters.
    check = consortium.client.get("/v1/ledger/verification", headers=bearer(compliance_token)).get_json()
    assert check["ok"] and check["verified"] == check["size"] == len(entries)
    assert {e["bank_id"] for e in _entries(consortium, compliance_token, bank_id="bank-2")} == {"bank-2"}
    assert len(_entries(consortium, compliance_token, event="contribution.accepted", run_id=run_id)) == 3
    assert [e["event"] for e in _entries(consortium, compliance_token, model_version=1)] == [
        "model.published", "model.current", "run.completed"]
    at = entries[-1]["at"]
    assert _entries(consortium, compliance_token, since=at) == [e for e in entries if e["at"] >= at]
    assert _entries(consortium, compliance_token, until="2000-01-01T00:00:00Z") == []


def test_who_reads_what(consortium: Consortium, he_key: crypto.HEScheme, compliance_token: str) -> None:
    _run_to_publication(consortium, he_key)
    bank = consortium.bank("bank-1")
    for path in ("/v1/ledger/entries", "/v1/ledger/export", "/v1/ledger/verification", "/v1/ledger/banks",
                 "/v1/models/1/lineage"):
        assert consortium.client.get(path, headers=bank.auth).status_code == 403, path
        assert consortium.client.get(path).status_code == 401, path
        assert consortium.client.get(path, headers=bearer(compliance_token)).status_code == 200, path
    for path in ("/v1/ledger/key", "/v1/ledger/checkpoint", "/v1/ledger/proofs/consistency?old=1",
                 "/v1/ledger/proofs/inclusion?index=0"):
        assert consortium.client.get(path, headers=bank.auth).status_code == 200, path
    # Compliance reads; it changes nothing.
    refused = consortium.client.post("/v1/runs", json={"model": "xgboost", "params": {}},
                                     headers=bearer(compliance_token))
    assert refused.status_code == 403
    bad = consortium.client.get("/v1/ledger/entries?event=run.exploded", headers=bearer(compliance_token))
    assert bad.status_code == 422 and "event" in json.dumps(bad.get_json()["errors"])


def test_proofs_let_a_bank_follow_the_log_from_one_checkpoint_to_the_next(
    consortium: Consortium, he_key: crypto.HEScheme
) -> None:
    from crypto.checkpoint import check_growth

    bank = consortium.bank("bank-1")
    key = _public_key(consortium)
    first = Checkpoint.from_json(consortium.client.get("/v1/ledger/checkpoint", headers=bank.auth).get_json())
    first.verify(key)
    _run_to_publication(consortium, he_key)
    latest = Checkpoint.from_json(consortium.client.get("/v1/ledger/checkpoint", headers=bank.auth).get_json())
    proof = consortium.client.get(f"/v1/ledger/proofs/consistency?old={first.size}", headers=bank.auth).get_json()
    assert Checkpoint.from_json(proof["checkpoint"]) == latest and latest.size > first.size
    check_growth(first, latest, [base64.b64decode(p) for p in proof["proof"]], key)
    beyond = consortium.client.get(f"/v1/ledger/proofs/consistency?old={latest.size + 1}", headers=bank.auth)
    assert beyond.status_code == 422


def test_one_request_proves_many_entries_as_their_proofs_one_by_one_do(
    consortium: Consortium, he_key: crypto.HEScheme, compliance_token: str
) -> None:
    bank = consortium.bank("bank-1")
    _run_to_publication(consortium, he_key)
    latest = Checkpoint.from_json(consortium.client.get("/v1/ledger/checkpoint", headers=bank.auth).get_json())
    size = latest.size - 2  # an older checkpoint than the newest, as a bank asks after its last look
    indices = [size - 1, 0, 3, 1]

    def batch(body: dict[str, Any]) -> Any:
        return consortium.client.post("/v1/ledger/proofs/inclusions", json=body, headers=bank.auth)

    answer = batch({"indices": indices, "size": size})
    assert answer.status_code == 200, answer.get_json()
    document = answer.get_json()
    singles = [consortium.client.get(f"/v1/ledger/proofs/inclusion?index={i}&size={size}", headers=bank.auth).get_json()
               for i in indices]
    assert [p["index"] for p in document["proofs"]] == indices  # in the order asked
    assert [p["proof"] for p in document["proofs"]] == [single["proof"] for single in singles]
    assert document["checkpoint"] == singles[0]["checkpoint"] and document["checkpoint"]["size"] == size
    # Each proof leads from its entry to the signed root (the checks a bank makes).
    signed = Checkpoint.from_json(document["checkpoint"])
    signed.verify(_public_key(consortium))
    texts = {e["index"]: e["entry"] for e in _entries(consortium, compliance_token)}
    for item in document["proofs"]:
        verify_inclusion(item["index"], size, leaf_hash(texts[item["index"]].encode("utf-8")),
                         [base64.b64decode(h) for h in item["proof"]], signed.root)
    # The newest size when none is given.
    assert batch({"indices": [0]}).get_json()["checkpoint"]["size"] == latest.size

    # Refused, naming what is wrong, before any proof is made.
    for body, field, words in (
        ({"indices": [0, size], "size": size}, "indices", "not in a log of"),
        ({"indices": [], "size": size}, "indices", "Length"),
        ({"indices": [2, 1, 2]}, "indices", "more than once: [2]"),
        ({"indices": list(range(1001))}, "indices", "Length"),
        ({"indices": [-1]}, "indices", "greater than or equal to 0"),
        ({"indices": [0], "size": latest.size + 1}, "size", "beyond the log"),
        ({"indices": [0], "extra": 1}, "extra", "Unknown field"),
    ):
        refused = batch(body)
        assert refused.status_code == 422, (body, refused.get_json())
        assert field in refused.get_json()["errors"] and words.lower() in json.dumps(refused.get_json()).lower(), body
    assert consortium.client.post("/v1/ledger/proofs/inclusions", json={"indices": [0]}).status_code == 401


def test_lineage_and_bank_summaries(consortium: Consortium, he_key: crypto.HEScheme, compliance_token: str) -> None:
    run_id, receipts = _run_to_publication(consortium, he_key)
    lineage = consortium.client.get("/v1/models/1/lineage", headers=bearer(compliance_token)).get_json()
    assert lineage["run"]["run_id"] == run_id and lineage["banks"] == ["bank-1", "bank-2", "bank-3"]
    [round_] = lineage["rounds"]
    assert round_["state"] == "released" and round_["n_addends"] == 3
    indexes = sorted(c["ledger_index"] for c in round_["contributions"])
    assert indexes == sorted(r["index"] for r in receipts)
    summaries = {s["bank_id"]: s for s in
                 consortium.client.get("/v1/ledger/banks", headers=bearer(compliance_token)).get_json()}
    assert summaries["bank-1"]["runs_joined"] == 1 and summaries["bank-1"]["contributions"] == 1
    assert summaries["bank-1"]["proposals"] == 1 and summaries["bank-1"]["refusals"] == 0
    assert summaries["bank-1"]["bytes"] == round_["contributions"][0]["payload_size"]


@pytest.mark.parametrize("noisy_terminals", [False, True])
def test_a_private_runs_spend_is_recorded_once_per_bank_and_composed_in_its_summary(
    consortium: Consortium, he_key: crypto.HEScheme, compliance_token: str, noisy_terminals: bool
) -> None:
    from schemas.privacy import compose_epsilon, run_privacy

    params: dict[str, object] = {"n_trees": 10, "max_depth": 3, "dp_epsilon": 2.0}
    if noisy_terminals:  # the terminal statistics' noisy day counts are spent too
        params.update(consortium_features=True, terminal_dp_epsilon=1.0)
    runs = [consortium.open_run(params=params)["run_id"] for _ in range(2)]
    plain = consortium.open_run()["run_id"]
    for run_id in runs:
        for round_key in ("r/n3", "r2/n3"):
            assert consortium.bank("bank-1").contribute(run_id, round_key, he_key.encrypt(np.ones(3))).status_code == 201
        assert consortium.bank("bank-2").contribute(run_id, "r/n3", he_key.encrypt(np.ones(3))).status_code == 201
    assert consortium.bank("bank-3").contribute(plain, "r/n3", he_key.encrypt(np.ones(3))).status_code == 201
    spent = _entries(consortium, compliance_token, event="privacy.spent")
    assert [(e["bank_id"], e["run_id"]) for e in spent] == [("bank-1", runs[0]), ("bank-2", runs[0]),
                                                            ("bank-1", runs[1]), ("bank-2", runs[1])]
    setting = run_privacy("xgboost", params)
    assert setting is not None
    assert spent[0]["details"]["epsilon"] == 2.0 and spent[0]["details"]["releases"] == setting.releases == 31
    assert spent[0]["details"]["noise_multiplier"] == pytest.approx(setting.multiplier)
    summaries = {s["bank_id"]: s for s in
                 consortium.client.get("/v1/ledger/banks", headers=bearer(compliance_token)).get_json()}
    both = compose_epsilon(setting.mechanisms() * 2, 1e-5)
    assert summaries["bank-1"]["privacy_budget_spent"] == pytest.approx(both)
    if noisy_terminals:
        assert spent[0]["details"]["terminal_epsilon"] == 1.0
        assert spent[0]["details"]["terminal_noise_multiplier"] == pytest.approx(setting.terminal_multiplier)
    else:
        assert "terminal_epsilon" not in spent[0]["details"]
    # The promotion gate's noisy histograms are one more release, at the run's epsilon by default.
    assert spent[0]["details"]["gate_epsilon"] == 2.0
    assert spent[0]["details"]["gate_noise_multiplier"] == pytest.approx(setting.gate_multiplier)
    assert spent[0]["details"]["total_epsilon"] == pytest.approx(setting.total_epsilon)
    assert setting.total_epsilon < both < 2 * setting.total_epsilon  # Renyi composition: less than the sum
    assert summaries["bank-1"]["private_runs"] == summaries["bank-2"]["private_runs"] == 2
    assert summaries["bank-3"]["privacy_budget_spent"] is None and summaries["bank-3"]["private_runs"] == 0


def test_a_private_run_started_over_is_charged_again_in_the_ledger(
    consortium: Consortium, he_key: crypto.HEScheme, compliance_token: str
) -> None:
    from schemas.privacy import compose_epsilon, run_privacy

    params = {"n_trees": 10, "max_depth": 3, "dp_epsilon": 2.0}
    run_id = consortium.open_run(params=params)["run_id"]
    bank = consortium.bank("bank-1")
    for round_key in ("r/n3", "r2/n3", "e1/r/n3", "e1/r2/n3"):  # epoch 1: the run started over
        assert bank.contribute(run_id, round_key, he_key.encrypt(np.ones(3))).status_code == 201
    spent = _entries(consortium, compliance_token, event="privacy.spent")
    assert [(e["run_id"], e["details"].get("epoch")) for e in spent] == [(run_id, None), (run_id, 1)]
    setting = run_privacy("xgboost", params)
    assert setting is not None
    [summary] = [s for s in consortium.client.get("/v1/ledger/banks", headers=bearer(compliance_token)).get_json()
                 if s["bank_id"] == "bank-1"]
    assert summary["private_runs"] == 1
    assert summary["privacy_budget_spent"] == pytest.approx(compose_epsilon(setting.mechanisms() * 2, 1e-5))


def test_every_contribution_to_a_private_run_comes_with_the_receipt_of_the_banks_spend(
    consortium: Consortium, he_key: crypto.HEScheme, compliance_token: str
) -> None:
    """What the bank's agent checks its recorded spend against (``LedgerWatch.keep``): with every
    contribution to a private run, the receipt of the entry recording that bank's spend in the
    run's epoch, in the answer or, when the answer is the round's sum, in a header."""
    import base64 as b64

    from schemas.privacy import run_privacy

    params = {"n_trees": 10, "max_depth": 3, "dp_epsilon": 2.0}
    run_id = consortium.open_run(params=params)["run_id"]
    key = _public_key(consortium)
    bank = consortium.bank("bank-1")
    indexes = []
    for round_key in ("r/n3", "r2/n3", "e1/r/n3"):
        answer = bank.contribute(run_id, round_key, he_key.encrypt(np.ones(3)))
        assert answer.status_code == 201
        fields, _ = verify_receipt(answer.get_json()["privacy_receipt"], key)
        assert (fields["event"], fields["bank_id"], fields["run_id"]) == ("privacy.spent", "bank-1", run_id)
        indexes.append(fields["index"])
    spent = _entries(consortium, compliance_token, event="privacy.spent")
    assert indexes == [spent[0]["index"], spent[0]["index"], spent[1]["index"]]  # epoch 1: its own entry
    setting = run_privacy("xgboost", params)
    assert setting is not None
    assert {k: v for k, v in spent[0]["details"].items() if k != "round_key"} == setting.to_json()

    # The last bank of a round waits for its sum: the receipt comes as a header.
    for other in ("bank-1", "bank-2"):
        assert consortium.bank(other).contribute(run_id, "r3/n3", he_key.encrypt(np.ones(3))).status_code == 201
    last = consortium.bank("bank-3")
    message = contribution_message(run_id, "r3/n3", "bank-3", payload := he_key.encrypt(np.ones(3)))
    answer = consortium.client.put(f"/v1/runs/{run_id}/contributions/r3/n3?wait=5", data=payload,
                                   headers={**last.auth, "X-Fedfraud-Signature": sign(last.keys.signing, message)},
                                   content_type="application/octet-stream")
    assert answer.status_code == 200
    # Both receipts fit the TLS front's header buffer (ops/nginx: proxy_buffer_size).
    from tests.ops.test_deployment_files import RECEIPT_HEADERS_MAX

    sizes = [len(answer.headers[name]) for name in ("X-Fedfraud-Receipt", "X-Fedfraud-Privacy-Receipt")]
    assert sum(sizes) < RECEIPT_HEADERS_MAX / 4  # a small log here: a proof's hashes grow as its log2
    header = json.loads(b64.b64decode(answer.headers["X-Fedfraud-Privacy-Receipt"]))
    fields, _ = verify_receipt(header, key)
    assert (fields["event"], fields["bank_id"]) == ("privacy.spent", "bank-3")

    # A replay (the bank restarted after its upload was stored) is answered 409 with the receipt of
    # its spend in the epoch, which it may not have seen; a refusal of another kind has none.
    replay = bank.contribute(run_id, "r/n3", he_key.encrypt(np.ones(3)))
    assert replay.status_code == 409
    fields, _ = verify_receipt(replay.get_json()["privacy_receipt"], key)
    assert fields["index"] == spent[0]["index"]

    plain = consortium.open_run()["run_id"]
    answer = bank.contribute(plain, "r/n3", he_key.encrypt(np.ones(3)))
    assert answer.status_code == 201 and answer.get_json()["privacy_receipt"] is None
    replay = bank.contribute(plain, "r/n3", he_key.encrypt(np.ones(3)))
    assert replay.status_code == 409 and "privacy_receipt" not in replay.get_json()


def test_a_refused_contribution_is_recorded_and_a_failed_state_change_leaves_no_entry(
    consortium: Consortium, he_key: crypto.HEScheme, compliance_token: str
) -> None:
    run_id = consortium.open_run()["run_id"]
    one = consortium.bank("bank-1")
    assert one.contribute(run_id, "r/n3", he_key.encrypt(np.ones(3))).status_code == 201
    before = _entries(consortium, compliance_token)
    assert one.contribute(run_id, "r/n3", he_key.encrypt(np.ones(3))).status_code == 409
    [refused] = _entries(consortium, compliance_token)[len(before):]
    assert refused["event"] == "contribution.refused" and refused["bank_id"] == "bank-1"
    assert refused["details"]["status"] == 409 and "already contributed" in refused["details"]["reason"]
    # An enrolment refused (the id is taken) changes nothing, so records nothing.
    count = len(_entries(consortium, compliance_token))
    taken = consortium.client.post("/v1/banks", json={"bank_id": "bank-1", "name": "again"},
                                   headers=bearer(consortium.operator))
    assert taken.status_code == 409 and len(_entries(consortium, compliance_token)) == count


# ------------------------------------------------------------------------------------ tampering

def _sql(app: Flask, statement: str, **params: Any) -> None:
    engine = Database.engine_for(app)
    with engine.begin() as connection:
        connection.execute(text(statement), params)


def _row(app: Flask, seq: int) -> dict[str, Any]:
    with Database.engine_for(app).connect() as connection:
        return dict(connection.execute(text("SELECT * FROM ledger_entries WHERE seq = :s"), {"s": seq}).mappings().one())


def _export(consortium: Consortium, token: str, path: Path) -> Path:
    response = consortium.client.get("/v1/ledger/export", headers=bearer(token))
    assert response.status_code == 200
    path.write_bytes(response.data)
    response.close()  # a streamed response keeps its request (and database session) until closed
    return path


def _verify_cli(export: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["ledger", "verify", str(export), *args])
    return result.exit_code, result.output


def _swap(app: Flask, a: int, b: int) -> None:
    rows = {seq: _row(app, seq) for seq in (a, b)}
    for seq, other in ((a, b), (b, a)):
        _sql(app, "UPDATE ledger_entries SET body = :body, leaf_hash = :leaf, root = :root, signature = :sig, "
                  "timestamp_ms = :ts WHERE seq = :seq", body=rows[other]["body"], leaf=rows[other]["leaf_hash"],
             root=rows[other]["root"], sig=rows[other]["signature"], ts=rows[other]["timestamp_ms"], seq=seq)


TAMPERING = ["changed", "changed and rehashed", "deleted", "inserted", "reordered", "newest deleted"]


@pytest.mark.parametrize("tampering", TAMPERING)
def test_tampering_in_the_database_is_found_and_the_first_bad_entry_named(
    consortium: Consortium, he_key: crypto.HEScheme, compliance_token: str, app: Flask,
    app_config: dict[str, Any], tmp_path: Path, tampering: str,
) -> None:
    _, receipts = _run_to_publication(consortium, he_key)
    key = _public_key(consortium)
    target = receipts[1]["index"]  # bank-2's contribution
    row = _row(app, target)
    # Verified once before the tampering: the rows this process already checked are not trusted blindly.
    assert consortium.client.get("/v1/ledger/verification", headers=bearer(compliance_token)).get_json()["ok"]
    if tampering == "changed":
        _sql(app, "UPDATE ledger_entries SET body = :b WHERE seq = :s",
             b=row["body"].replace('"payload_size":', '"payload_size":1'), s=target)
    elif tampering == "changed and rehashed":  # the DBA recomputes the hashes but cannot sign
        body = row["body"].replace("bank-2", "bank-3")
        tree = Tree([bytes.fromhex(_row(app, seq)["leaf_hash"]) for seq in range(target)])
        leaf = leaf_hash(body.encode())
        _sql(app, "UPDATE ledger_entries SET body = :b, bank_id = 'bank-3', leaf_hash = :l, root = :r WHERE seq = :s",
             b=body, l=leaf.hex(), r=tree.root_with(leaf).hex(), s=target)
    elif tampering == "deleted":
        _sql(app, "DELETE FROM ledger_entries WHERE seq = :s", s=target)
    elif tampering == "newest deleted":  # the tail cut off, the head counter put back: no gap left
        _sql(app, "DELETE FROM ledger_entries WHERE seq >= :s", s=target)
        _sql(app, "UPDATE ledger_head SET size = :s", s=target)
    elif tampering == "inserted":  # entries moved up by one, a forged entry in the gap, signed by another key
        _sql(app, "UPDATE ledger_entries SET seq = seq + 100000 WHERE seq >= :s", s=target)
        _sql(app, "UPDATE ledger_entries SET seq = seq - 99999 WHERE seq >= 100000")
        body = canonical_entry(target, "run.failed", datetime(2025, 3, 1), run_id=row["run_id"],
                               details={"reason": "forged"})
        tree = Tree([bytes.fromhex(_row(app, seq)["leaf_hash"]) for seq in range(target)])
        forged = Checkpoint("fedfraud-consortium", target + 1, tree.root_with(leaf_hash(body)), 0) \
            .signed(SigningKey.generate())
        _sql(app, "INSERT INTO ledger_entries (seq, event, at, run_id, body, leaf_hash, root, timestamp_ms, signature)"
                  " VALUES (:s, 'run.failed', :at, :run, :b, :l, :r, 0, :sig)", s=target, at=datetime(2025, 3, 1),
             run=row["run_id"], b=body.decode(), l=leaf_hash(body).hex(), r=forged.root.hex(), sig=forged.signature)
    else:
        _swap(app, target, target + 1)

    if tampering == "newest deleted":
        # What is left is a consistent shorter log: only a record kept outside the database tells.
        # The running process knows its log was longer, and a restarted one reads the service's
        # witness beside its key; offline, a checkpoint a bank accepted (or its receipts) does.
        newer = consortium.client.post("/v1/banks", json={"bank_id": "bank-8", "name": "Eight"},
                                       headers=bearer(consortium.operator))
        assert newer.status_code == 503 and f"broken at entry {target}" in newer.get_json()["message"]
        export = _export(consortium, compliance_token, tmp_path / "ledger.jsonl")
        (tmp_path / "receipts").mkdir()
        (tmp_path / "receipts" / "last.json").write_text(json.dumps(receipts[-1]))
        status, output = _verify_cli(export, "--key", key, "--receipts", str(tmp_path / "receipts"))
        assert status == 1 and f"first bad entry: {target}" in output, output
    else:
        # The service's own check names the entry ...
        check = consortium.client.get("/v1/ledger/verification", headers=bearer(compliance_token)).get_json()
        assert not check["ok"] and check["first_bad"] == target and check["verified"] == target, check
        # ... so does the offline verifier on an export, pinned key or not ...
        export = _export(consortium, compliance_token, tmp_path / "ledger.jsonl")
        for args in ((), ("--key", key)):
            status, output = _verify_cli(export, *args)
            assert status == 1 and f"BROKEN at entry {target}" in output and f"first bad entry: {target}" in output, \
                output
    # ... and a process starting on this database refuses to change anything, naming it.
    restarted = create_app(app_config)
    try:
        response = restarted.test_client().post("/v1/banks", json={"bank_id": "bank-9", "name": "Nine"},
                                                headers=bearer(consortium.operator))
        assert response.status_code == 503 and f"broken at entry {target}" in response.get_json()["message"]
        with restarted.app_context():
            from consortium.storage.database import db
            from consortium.storage.models import Bank

            assert db.session.get(Bank, "bank-9") is None
    finally:
        Database.engine_for(restarted).dispose()


def test_an_intact_log_verifies_offline_with_the_banks_receipts(
    consortium: Consortium, he_key: crypto.HEScheme, compliance_token: str, tmp_path: Path
) -> None:
    _, receipts = _run_to_publication(consortium, he_key)
    folder = tmp_path / "receipts"
    folder.mkdir()
    for receipt in receipts:
        (folder / f"{receipt['index']}.json").write_text(json.dumps(receipt))
    export = _export(consortium, compliance_token, tmp_path / "ledger.jsonl")
    status, output = _verify_cli(export, "--key", _public_key(consortium), "--receipts", str(folder))
    assert status == 0 and "verified: all" in output and "receipts: 3 of 3 still proven" in output, output
    status, output = _verify_cli(tmp_path / "missing.jsonl")
    assert status != 0 and "cannot be read" in output and "Traceback" not in output
    (tmp_path / "not.jsonl").write_text("hello\n")
    status, output = _verify_cli(tmp_path / "not.jsonl")
    assert status == 2 and "not a fedfraud ledger export" in output


def test_a_whole_log_rewritten_and_re_signed_with_a_new_key_is_caught_by_the_receipts(
    consortium: Consortium, he_key: crypto.HEScheme, compliance_token: str, app: Flask, tmp_path: Path
) -> None:
    """The operator holds the database and the key file: it rewrites bank-2's contribution, then
    re-signs every checkpoint with a new key. The export is consistent under its own new key, so
    only what the banks kept can tell: their receipts, signed under the key they pinned."""
    _, receipts = _run_to_publication(consortium, he_key)
    old_key = _public_key(consortium)
    target = receipts[1]["index"]
    new_key = SigningKey.generate()
    rewrite_ledger(Database.engine_for(app), target, lambda body: body.replace("bank-2", "bank-3"), new_key)
    rewritten = tmp_path / "rewritten.jsonl"
    lines = _export(consortium, compliance_token, rewritten).read_text().splitlines()
    header = json.loads(lines[0])
    header["public_key"] = base64.b64encode(bytes(new_key.verify_key)).decode()
    rewritten.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")

    status, output = _verify_cli(rewritten)  # consistent under its own key: nothing to see
    assert status == 0, output
    status, output = _verify_cli(rewritten, "--key", old_key)  # the pinned key: not this log
    assert status == 1 and "first bad entry: 0" in output
    folder = tmp_path / "receipts"
    folder.mkdir()
    for receipt in receipts:
        (folder / f"{receipt['index']}.json").write_text(json.dumps(receipt))
    status, output = _verify_cli(rewritten, "--receipts", str(folder))
    assert status == 1 and "re-signed with another key" in output, output


def test_a_rotated_key_signs_on_and_the_log_verifies_under_the_key_pinned_before_or_after(
    consortium: Consortium, he_key: crypto.HEScheme, compliance_token: str, app: Flask, tmp_path: Path
) -> None:
    """The operator rotates the ledger's key: the new key signs from the rotation on, the old one
    endorsed it and is gone. Compliance staff (and banks) holding either key verify the whole log
    offline, with receipts signed before and after; any other key does not verify it."""
    from consortium.ledger import KEY_FILE_NAME, rotate_key, staged_key_path
    from consortium.storage.database import db

    _, receipts = _run_to_publication(consortium, he_key)
    old_key = _public_key(consortium)
    with app.app_context():
        old, new = rotate_key(db.session)
    assert old == old_key and new != old_key
    later = consortium.client.post("/v1/banks", json={"bank_id": "bank-9", "name": "Bank 9"},
                                   headers=bearer(consortium.operator))
    assert later.status_code == 201  # the next state change, signed by the new key
    key = consortium.client.get("/v1/ledger/key", headers=bearer(consortium.operator)).get_json()
    assert key["public_key"] == new and [r["index"] for r in key["rotations"]] == [
        e["index"] for e in _entries(consortium, compliance_token, event="ledger.key_rotated")]
    [rotation] = _entries(consortium, compliance_token, event="ledger.key_rotated")
    assert rotation["details"]["previous_key"] == old_key and rotation["details"]["public_key"] == new
    verification = consortium.client.get("/v1/ledger/verification", headers=bearer(compliance_token)).get_json()
    assert verification["ok"] and verification["verified"] == verification["size"] > rotation["index"] + 1
    key_file = Path(app.config["BLOB_DIR"]).parent / KEY_FILE_NAME
    held = SigningKey(base64.b64decode(key_file.read_bytes()))
    assert base64.b64encode(bytes(held.verify_key)).decode() == new and not staged_key_path(key_file).exists()

    folder = tmp_path / "receipts"
    folder.mkdir()
    newest = consortium.client.get(f"/v1/ledger/entries/{rotation['index'] + 1}",
                                   headers=bearer(compliance_token)).get_json()
    for document in [*receipts, newest]:
        (folder / f"{document['index']}.json").write_text(json.dumps(document))
    export = _export(consortium, compliance_token, tmp_path / "ledger.jsonl")
    for pinned in (old_key, new):
        status, output = _verify_cli(export, "--key", pinned, "--receipts", str(folder))
        assert status == 0 and "verified: all" in output and "receipts: 4 of 4 still proven" in output, output
    stranger = base64.b64encode(bytes(SigningKey.generate().verify_key)).decode()
    status, output = _verify_cli(export, "--key", stranger)
    assert status == 1 and "no checkpoint of this log is signed by the pinned key" in output, output


def test_entries_at_sub_millisecond_times_still_verify(
    consortium: Consortium, compliance_token: str, clock: Any
) -> None:
    """Entries state milliseconds; the stored time must be the stated one, whatever the clock's
    precision (a real clock's microseconds once made every entry look tampered with)."""
    for i in range(3):
        clock.advance(0.0004567 + i)
        response = consortium.client.post("/v1/banks", json={"bank_id": f"bank-{10 + i}", "name": "Ten"},
                                          headers=bearer(consortium.operator))
        assert response.status_code == 201
    check = consortium.client.get("/v1/ledger/verification", headers=bearer(compliance_token)).get_json()
    assert check["ok"], check


def test_a_forged_time_in_an_old_entry_never_dates_new_checkpoints_and_once_found_stops_changes(
    consortium: Consortium, he_key: crypto.HEScheme, compliance_token: str, app: Flask, app_config: dict[str, Any]
) -> None:
    _run_to_publication(consortium, he_key)
    _sql(app, "UPDATE ledger_entries SET timestamp_ms = 99999999999999 WHERE seq = 3")
    restarted = create_app(app_config)
    try:
        client = restarted.test_client()
        added = client.post("/v1/banks", json={"bank_id": "bank-9", "name": "Nine"}, headers=bearer(consortium.operator))
        assert added.status_code == 201
        newest = client.get("/v1/ledger/checkpoint", headers=bearer(compliance_token)).get_json()
        assert newest["timestamp_ms"] < 99999999999999  # the unsigned time was not taken up
        check = client.get("/v1/ledger/verification", headers=bearer(compliance_token)).get_json()
        assert not check["ok"] and check["first_bad"] == 3
        refused = client.post("/v1/banks", json={"bank_id": "bank-10", "name": "Ten"},
                              headers=bearer(consortium.operator))
        assert refused.status_code == 503 and "broken at entry 3" in refused.get_json()["message"]
    finally:
        Database.engine_for(restarted).dispose()


@pytest.mark.parametrize("where", ["while writing the entry", "at the commit"])
def test_a_failure_between_a_state_change_and_its_entry_leaves_neither(
    consortium: Consortium, he_key: crypto.HEScheme, compliance_token: str, app: Flask,
    monkeypatch: pytest.MonkeyPatch, where: str,
) -> None:
    """A contribution whose entry cannot be written (signing fails), or whose transaction fails at
    the commit after both were written: no contribution, no entry, no gap in the log; the next
    one goes through and the log still verifies."""
    from sqlalchemy import event as sa_event
    from sqlalchemy.orm import Session

    from consortium.ledger import Ledger

    run_id = consortium.open_run()["run_id"]
    before = _entries(consortium, compliance_token)

    class Injected(RuntimeError):
        pass

    def fail_signing(*_: Any, **__: Any) -> Any:
        raise Injected("signing failed")

    def fail_commit(session: Session) -> None:
        if session.info.get(_PENDING):  # an entry is written in this transaction, with its state change
            raise Injected("the database went away")

    from consortium.ledger import _PENDING
    from consortium.storage.models import Contribution

    if where == "while writing the entry":
        monkeypatch.setattr(Ledger, "sign", fail_signing)
    else:
        sa_event.listen(Session, "before_commit", fail_commit)
    try:
        failed = consortium.bank("bank-1").contribute(run_id, "r/n3", he_key.encrypt(np.ones(3)))
        assert failed.status_code == 500 and "signing failed" not in failed.get_data(as_text=True)
    finally:
        monkeypatch.undo()
        if sa_event.contains(Session, "before_commit", fail_commit):
            sa_event.remove(Session, "before_commit", fail_commit)
    with app.app_context():
        from consortium.storage.database import db

        assert db.session.query(Contribution).count() == 0
    assert _entries(consortium, compliance_token) == before  # nor a refusal: it was not refused, it failed
    assert consortium.bank("bank-1").contribute(run_id, "r/n3", he_key.encrypt(np.ones(3))).status_code == 201
    after = _entries(consortium, compliance_token)
    assert [e["index"] for e in after] == list(range(len(after))) and after[-1]["event"] == "contribution.accepted"
    check = consortium.client.get("/v1/ledger/verification", headers=bearer(compliance_token)).get_json()
    assert check["ok"], check
