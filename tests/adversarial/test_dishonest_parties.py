"""One dishonest party against the real aggregator app: each attack of the trust audit is refused.

Played as a malicious bank (it holds a valid bank token and keys) or a curious one, through the
service's HTTP API on SQLite and PostgreSQL. The operator's attacks on the HE scheme are in
``tests/consortium/test_api_ceremony.py`` (plaintext refused) and the collusion of the aggregator
with one bank in ``test_collusion.py``.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
from flask.testing import FlaskClient

import crypto
from crypto.signing import note_message, verify

POISONED = json.dumps({"poisoned": True}).encode()
MODEL = json.dumps({"learner": {"trees": []}}).encode()


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_no_quorum_of_two_can_be_asked_for_or_summed(
    consortium: Any, client: FlaskClient, he_key: crypto.HEScheme, clock: Any
) -> None:
    operator = _auth(consortium.operator)
    for body in ({"model": "xgboost", "min_banks": 2}, {"model": "xgboost", "participants": ["bank-1", "bank-2"]}):
        refused = client.post("/v1/runs", json=body, headers=operator)
        assert refused.status_code == 422, refused.get_json()
    run_id = consortium.open_run(round_timeout_s=10)["run_id"]
    for bank_id in ("bank-1", "bank-2"):
        consortium.bank(bank_id).contribute(run_id, "r", he_key.encrypt(np.ones(4)))
    assert consortium.bank("bank-1").aggregate(run_id, "r").status_code == 202
    clock.advance(11)
    # bank-1 would subtract itself from a sum of two: it never gets one
    assert consortium.bank("bank-1").aggregate(run_id, "r").status_code == 409


def test_one_bank_cannot_publish_a_model_on_its_own(
    consortium: Any, client: FlaskClient, he_key: crypto.HEScheme, clock: Any
) -> None:
    run_id = consortium.open_run(round_timeout_s=10)["run_id"]
    attacker = consortium.bank("bank-1")
    assert attacker.contribute(run_id, "made-up", he_key.encrypt(np.ones(2))).status_code == 201
    assert attacker.propose(run_id, POISONED).get_json()["state"] == "waiting"
    clock.advance(11)  # its made-up round fails alone; the run goes on
    assert attacker.propose(run_id, MODEL).get_json()["state"] == "waiting"
    run = consortium.run(run_id)
    assert run["state"] == "open" and run["model_version"] is None
    assert client.get("/v1/models", headers=_auth(consortium.operator)).get_json() == []


def test_a_digest_no_quorum_signed_is_not_published(consortium: Any, he_key: crypto.HEScheme) -> None:
    run_id = consortium.open_run()["run_id"]
    for bank_id in ("bank-1", "bank-2", "bank-3"):
        consortium.bank(bank_id).contribute(run_id, "r", he_key.encrypt(np.ones(2)))
    assert consortium.bank("bank-1").propose(run_id, POISONED).get_json()["state"] == "waiting"
    assert consortium.bank("bank-2").propose(run_id, POISONED).get_json()["state"] == "waiting"
    # two of three full contributors are below the quorum of three
    outcome = consortium.bank("bank-3").propose(run_id, MODEL).get_json()
    assert outcome["state"] == "waiting" and outcome["required"] == 3
    assert consortium.run(run_id)["model_version"] is None
    assert consortium.bank("bank-3").propose(run_id, POISONED).get_json()["state"] == "published"


def test_notes_come_only_from_summed_banks_once_and_signed(
    consortium4: Any, he_key: crypto.HEScheme, clock: Any, snapshot: Any
) -> None:
    consortium = consortium4
    run_id = consortium.open_run(round_timeout_s=10)["run_id"]
    seed = bytes(range(32))
    for bank_id in ("bank-1", "bank-2", "bank-3"):
        consortium.bank(bank_id).contribute(run_id, "r", he_key.encrypt(np.ones(2)))
    one, four = consortium.bank("bank-1"), consortium.bank("bank-4")
    assert one.note(run_id, "r", seed).status_code == 409  # the round is still open
    clock.advance(11)
    assert one.aggregate(run_id, "r").headers["X-Fedfraud-Contributors"] == "bank-1,bank-2,bank-3"
    before = snapshot()
    assert four.note(run_id, "r", seed).status_code == 409  # not in the sum
    assert one.note(run_id, "r", seed, signature="A" * 86 + "==").status_code == 400  # not its signature
    assert one.note(run_id, "r", b"").status_code == 422
    assert one.note(run_id, "r", bytes(1025)).status_code == 422
    assert snapshot() == before
    assert one.note(run_id, "r", seed).status_code == 201
    assert one.note(run_id, "r", seed).status_code == 409  # once
    notes = four.notes(run_id, "r").get_json()
    assert notes["summed"] == ["bank-1", "bank-2", "bank-3"]
    (posted,) = notes["notes"]
    assert posted["bank_id"] == "bank-1" and base64.b64decode(posted["note"]) == seed
    verify(one.keys.signing_public_b64, note_message(run_id, "r", "bank-1", seed), posted["signature"])


def test_one_bank_cannot_reshape_the_round_the_others_contribute_to(
    consortium: Any, he_key: crypto.HEScheme, clock: Any
) -> None:
    """The round key names the length every honest bank sends (``.../n5``): a bank that uploads
    first with another length is refused there, and a round it opens under another key fails alone."""
    run_id = consortium.open_run(round_timeout_s=10)["run_id"]
    attacker, *honest = consortium.banks.values()
    refused = attacker.contribute(run_id, "gbdt/bins/n5", he_key.encrypt(np.ones(3)))
    assert refused.status_code == 422 and "names 5" in refused.get_json()["message"]
    assert attacker.contribute(run_id, "gbdt/bins/n3", he_key.encrypt(np.ones(3))).status_code == 201
    for bank in [attacker, *honest]:
        assert bank.contribute(run_id, "gbdt/bins/n5", he_key.encrypt(np.ones(5))).status_code == 201
    total = honest[0].aggregate(run_id, "gbdt/bins/n5")
    assert total.status_code == 200 and np.allclose(he_key.decrypt(total.data), 3.0, atol=1e-3)
    clock.advance(11)
    run = consortium.run(run_id)
    states = {r["round_key"]: r["state"] for r in run["rounds"]}
    assert states == {"gbdt/bins/n5": "released", "gbdt/bins/n3": "failed"} and run["state"] == "open"


def test_a_restarted_round_is_released_once_its_banks_are_in_and_nobody_else_may_join(
    consortium4: Any, he_key: crypto.HEScheme
) -> None:
    """After bank-4 dropped out, the others restart without it (``e1-x3/...``): the aggregator
    does not wait for the deadline, refuses bank-4 there, and refuses a key leaving out so many
    banks that no quorum is left."""
    run_id = consortium4.open_run(round_timeout_s=600)["run_id"]
    key = "e1-x3/gbdt/bins/n2"
    banks = consortium4.banks
    left_out = banks["bank-4"].contribute(run_id, key, he_key.encrypt(np.ones(2)))
    assert left_out.status_code == 403 and "leaves bank 'bank-4' out" in left_out.get_json()["message"]
    for bank_id in ("bank-1", "bank-2", "bank-3"):
        assert banks[bank_id].contribute(run_id, key, he_key.encrypt(np.ones(2))).status_code == 201
    released = banks["bank-1"].aggregate(run_id, key)  # no clock advance: released at once
    assert released.status_code == 200 and released.headers["X-Fedfraud-Contributors"] == "bank-1,bank-2,bank-3"
    too_few = banks["bank-1"].contribute(run_id, "e1-x2.3/gbdt/bins/n2", he_key.encrypt(np.ones(2)))
    assert too_few.status_code == 422 and "quorum" in too_few.get_json()["message"]
