"""The roster relay and key generations: the aggregator stores what members sign, refuses what is
plainly not a roster approval, and never decides membership itself."""

from __future__ import annotations

from typing import Any

import numpy as np
from flask.testing import FlaskClient

import crypto
from crypto.roster import Roster
from tests.consortium.conftest import Consortium, bearer, sign_first_roster


def _relayed(client: FlaskClient, token: str, since: int = 0) -> list[dict[str, Any]]:
    response = client.get(f"/v1/roster?since={since}", headers=bearer(token))
    assert response.status_code == 200
    return response.get_json()  # type: ignore[no-any-return]


def test_every_member_signature_is_relayed_verbatim(consortium: Consortium) -> None:
    relayed = _relayed(consortium.client, consortium.operator)
    assert len(relayed) == 1
    entry = relayed[0]
    assert entry["version"] == 1 and entry["digest"] == consortium.roster.digest
    assert entry["document"].encode() == consortium.roster.to_bytes()
    assert sorted(s["bank_id"] for s in entry["signatures"]) == ["bank-1", "bank-2", "bank-3"]
    assert _relayed(consortium.client, consortium.operator, since=1) == []


def test_a_forged_or_malformed_roster_is_refused_and_leaves_nothing(consortium: Consortium, snapshot: Any) -> None:
    one = consortium.bank("bank-1")
    before = snapshot()
    forged = one.sign_roster(consortium.roster.to_bytes(), signature="A" * 86 + "==")
    assert forged.status_code == 400 and "signature" in forged.get_json()["message"]
    spaced = consortium.roster.to_bytes().replace(b",", b", ")
    assert one.sign_roster(spaced).status_code == 422
    assert one.sign_roster(b"{}").status_code == 422
    orphan = Roster.create(version=5, previous="0" * 64, members=consortium.roster.members)
    refused = one.sign_roster(orphan.to_bytes())
    assert refused.status_code == 422 and "predecessor" in refused.get_json()["message"]
    assert snapshot() == before


def test_competing_candidates_for_one_version_are_all_kept(consortium: Consortium, bank_factory: Any) -> None:
    """A bank cannot block a membership change by posting its own candidate first."""
    four = bank_factory(consortium.client, consortium.operator, "bank-4")
    assert four.register_keys().status_code == 200
    members = consortium.roster.members
    squat = Roster.create(version=2, previous=consortium.roster.digest, members=[*members, four.member])
    assert four.sign_roster(squat.to_bytes()).status_code == 200
    real = Roster.create(version=2, previous=consortium.roster.digest, members=members[1:] + (four.member,))
    assert consortium.bank("bank-2").sign_roster(real.to_bytes()).status_code == 200
    versions = [(r["version"], r["digest"]) for r in _relayed(consortium.client, consortium.operator, since=1)]
    assert sorted(versions) == sorted([(2, squat.digest), (2, real.digest)])


def test_a_share_for_a_bank_outside_the_keys_roster_is_refused(
    consortium: Consortium, bank_factory: Any, he_key: crypto.HEScheme, snapshot: Any
) -> None:
    """The operator's fake bank: enrolled, keys registered, but no member signed it in."""
    fake = bank_factory(consortium.client, consortium.operator, "bank-fake")
    assert fake.register_keys().status_code == 200
    before = snapshot()
    response = consortium.bank("bank-1").post_share(fake, he_key.key_id, he_key.secret_context())
    assert response.status_code == 422 and "not a member" in response.get_json()["message"]
    run = consortium.client.post(
        "/v1/runs", json={"model": "xgboost", "participants": ["bank-1", "bank-2", "bank-fake"]},
        headers=bearer(consortium.operator),
    )
    assert run.status_code == 422 and "roster" in run.get_json()["message"]
    assert snapshot() == before
    default = consortium.open_run()
    assert default["participants"] == ["bank-1", "bank-2", "bank-3"]


def test_a_share_with_a_missing_forged_or_foreign_signature_is_refused(
    client: FlaskClient, operator_token: str, bank_factory: Any, he_key: crypto.HEScheme, snapshot: Any
) -> None:
    """The audit found a share with a garbage signature accepted (201): now only the publisher's
    valid signature over this recipient and this key gets a share relayed."""
    banks = []
    for bank_id in ("bank-1", "bank-2", "bank-3"):
        bank = bank_factory(client, operator_token, bank_id)
        assert bank.register_keys().status_code == 200
        banks.append(bank)
    one, two, three = banks
    roster = sign_first_roster(banks)
    assert one.publish_context(he_key.public_context(), roster.digest).status_code == 201
    before = snapshot()
    unsigned = client.put("/v1/keys/shares/bank-2", data=b"y" * 100, headers=one.auth,
                          content_type="application/octet-stream")
    assert unsigned.status_code == 400 and "signature" in unsigned.get_json()["message"]
    garbage = one.post_share(two, he_key.key_id, he_key.secret_context(), signature="A" * 86 + "==")
    assert garbage.status_code == 400
    wrong_key_id = one.post_share(two, "another-key", he_key.secret_context())
    assert wrong_key_id.status_code == 400
    not_publisher = three.post_share(two, he_key.key_id, he_key.secret_context())
    assert not_publisher.status_code == 403
    assert snapshot() == before
    assert one.post_share(two, he_key.key_id, he_key.secret_context()).status_code == 201


def test_the_key_rotates_only_for_a_newer_roster_and_runs_keep_their_key(consortium: Consortium) -> None:
    one, two, three = (consortium.bank(b) for b in ("bank-1", "bank-2", "bank-3"))
    old_run = consortium.open_run()
    assert old_run["key_id"] == consortium.he.key_id
    rotated = crypto.generate("ckks", scale_bits=30)
    same_roster = one.publish_context(rotated.public_context(), consortium.roster.digest)
    assert same_roster.status_code == 409 and "newer roster" in same_roster.get_json()["message"]

    successor = Roster.create(version=2, previous=consortium.roster.digest, members=consortium.roster.members)
    for bank in (one, two):
        assert bank.sign_roster(successor.to_bytes()).status_code == 200
    published = two.publish_context(rotated.public_context(), successor.digest)
    assert published.status_code == 201, published.get_json()
    assert published.get_json()["generation"] == 2
    served = consortium.client.get("/v1/keys/context", headers=three.auth)
    assert served.data == rotated.public_context() and served.headers["X-Fedfraud-Roster"] == successor.digest
    assert consortium.client.get("/v1/keys/shares/bank-3", headers=three.auth).status_code == 404

    # The run opened before the rotation still sums ciphertexts of the old key.
    for index, bank in enumerate((one, two, three)):
        assert bank.contribute(old_run["run_id"], "r", consortium.he.encrypt(np.full(3, float(index)))).status_code == 201
    total = one.aggregate(old_run["run_id"], "r")
    assert total.status_code == 200
    assert np.allclose(consortium.he.decrypt(total.data), 3.0, atol=1e-3)
    assert consortium.open_run()["key_id"] == rotated.key_id
