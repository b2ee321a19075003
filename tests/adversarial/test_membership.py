"""A malicious operator against the banks' pinned roster: it runs the server, so it may serve
anything. Played with the real bank agent code over real HTTP against a server the test controls
(``FakeConsortium``), which lies the way an operator could.

Each attack of the trust audit on membership: a fake bank given the key, a swapped box key, a
forged roster, a replayed old roster, a key or share signed by a non-member, a published model
that no quorum signed or that differs from the bank's own, and a departed bank reading later sums.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import crypto
from bank_node.agent.ceremony import check_consortium_key, fetch_share, load_secret_scheme, publish_keys
from bank_node.agent.errors import CeremonyError
from bank_node.agent.membership import approve_roster, load_pinned, propose_roster, sync_roster
from bank_node.agent.runner import FAILED, PUBLISHED, REFUSED, BankAgent
from bank_node.agent.training import TrainingSet
from crypto.roster import Member, Roster, RosterError, accept, roster_message
from crypto.scheme import CryptoError
from crypto.signing import context_message, proposal_message, seal_to, share_message, sign
from tests.bank_node.agent.conftest import SETTINGS, Bank, pin_first_roster
from tests.bank_node.agent.fake_consortium import FakeConsortium

MODEL = json.dumps({"learner": {"trees": [1, 2, 3]}}).encode()


def _no_rows(window: object) -> TrainingSet:
    raise AssertionError("the agent must not train for a run it refuses")


def _agent(bank: Bank) -> BankAgent:
    return BankAgent(client=bank.client, identity=bank.identity, state=bank.state, training_rows=_no_rows,
                     settings=SETTINGS)


def _relay(fake: FakeConsortium, roster: Roster, signatures: dict[str, str]) -> None:
    """The operator puts a roster with signatures of its choosing into the relay."""
    fake.rosters[roster.digest] = {"version": roster.version, "digest": roster.digest,
                                   "document": roster.to_bytes().decode(), "proposed_by": "bank-1",
                                   "signatures": signatures}


def test_the_operators_fake_bank_gets_no_share_no_mask_and_no_run(
    fake: FakeConsortium, keyed_banks: list[Bank], make_bank: Callable[[str], Bank]
) -> None:
    first, second, _ = keyed_banks
    intruder = make_bank("bank-fake")  # enrolled by the operator, keys registered, never pinned
    # The operator also serves the intruder's box key as bank-2's.
    fake.banks["bank-2"]["box_key"] = intruder.identity.box_key_b64
    fake.shares.clear()

    result = publish_keys(first.client, first.identity, first.state, scheme="plain")

    assert result.shared_with == ("bank-2", "bank-3")  # the pinned members, not bank-fake
    sealed = fake.shares["bank-2"][0]
    assert crypto.load_context(second.identity.open_sealed(sealed)).has_secret_key  # sealed to the pinned key
    with pytest.raises(Exception, match="cannot open"):
        intruder.identity.open_sealed(sealed)
    with pytest.raises(CeremonyError, match="pinned no roster"):
        fetch_share(intruder.client, intruder.identity, intruder.state)

    run_id = fake.open_run("xgboost", {}, participants=["bank-1", "bank-2", "bank-3", "bank-fake"])
    outcomes = [outcome for bank in keyed_banks for outcome in _agent(bank).run_once()]
    assert outcomes and all(o.status == FAILED and "bank-fake" in o.message and "pinned roster" in o.message
                            for o in outcomes)
    # Each bank that looked said why; with two out, the run cannot reach its quorum and ended.
    assert set(fake.runs[run_id].withdrawn) == {"bank-1", "bank-2"} and fake.runs[run_id].state == "failed"
    rounds = fake.runs[run_id].rounds
    assert rounds is None or rounds.keys() == []


def test_a_forged_roster_is_never_pinned(
    fake: FakeConsortium, keyed_banks: list[Bank], make_bank: Callable[[str], Bank]
) -> None:
    intruder = make_bank("bank-fake")
    pinned = load_pinned(keyed_banks[0].state)
    assert pinned is not None
    members = [*pinned.roster.members, _member(intruder)]
    forged = Roster.create(version=2, previous=pinned.roster.digest, members=members)
    # Signatures "of" bank-1 and bank-2 made with the intruder's key, and the intruder's own.
    document = forged.to_bytes()
    signatures = {b: sign(intruder.identity.keys.signing, roster_message(b, document))
                  for b in ("bank-1", "bank-2", "bank-fake")}
    _relay(fake, forged, signatures)
    for bank in keyed_banks:
        after = sync_roster(bank.client, bank.identity, bank.state)
        assert after is not None and after.roster.version == 1 and "bank-fake" not in after.roster.bank_ids
    # A bank asked to add the intruder with the fingerprint the operator gave (its own) refuses.
    with pytest.raises(CeremonyError, match="do not add it"):
        propose_roster(keyed_banks[0].client, keyed_banks[0].identity, keyed_banks[0].state,
                       add={"bank-fake": keyed_banks[1].identity.fingerprint})


def _member(bank: Bank) -> Member:
    return Member(bank.bank_id, bank.identity.signing_key_b64, bank.identity.box_key_b64)


def test_an_old_roster_replayed_is_refused(fake: FakeConsortium, make_bank: Callable[[str], Bank]) -> None:
    banks = [make_bank(f"bank-{i}") for i in range(1, 5)]
    first_roster = pin_first_roster(banks)
    # bank-4 leaves: version 2, signed by three of the four members of version 1.
    second = propose_roster(banks[0].client, banks[0].identity, banks[0].state, add={}, remove=["bank-4"])
    for bank in banks[1:3]:
        approve_roster(bank.client, bank.identity, bank.state, digest=second.digest, fingerprints={})
    pinned = sync_roster(banks[1].client, banks[1].identity, banks[1].state)
    assert pinned is not None and pinned.roster.digest == second.digest

    replay = {b.bank_id: b.identity.sign_roster(first_roster.to_bytes()) for b in banks}
    with pytest.raises(RosterError, match="replay"):
        accept(pinned.roster, first_roster, replay, bank_id="bank-2")
    # The departed bank signs a "version 3" bringing itself back, forking from version 1: refused.
    fork = Roster.create(version=3, previous=first_roster.digest, members=first_roster.members)
    fork_signatures = {"bank-4": banks[3].identity.sign_roster(fork.to_bytes())}
    with pytest.raises(RosterError, match="does not follow"):
        accept(pinned.roster, fork, fork_signatures, bank_id="bank-2")
    _relay(fake, fork, fork_signatures)
    after = sync_roster(banks[1].client, banks[1].identity, banks[1].state)
    assert after is not None and after.roster.digest == second.digest


def test_a_key_or_share_signed_by_a_non_member_is_refused(
    fake: FakeConsortium, keyed_banks: list[Bank], make_bank: Callable[[str], Bank]
) -> None:
    first, second, _ = keyed_banks
    intruder = make_bank("bank-fake")
    pinned = load_pinned(second.state)
    assert pinned is not None
    # The operator's own key, published as if by its fake bank, with a share for bank-2.
    rogue = crypto.generate("plain")
    public = rogue.public_context()
    fake.public_context = public
    fake.context_headers = {
        "X-Fedfraud-Publisher": "bank-fake", "X-Fedfraud-Key-Id": rogue.key_id,
        "X-Fedfraud-Roster": pinned.roster.digest,
        "X-Fedfraud-Signature": sign(intruder.identity.keys.signing, context_message("bank-fake", pinned.roster.digest, public)),
    }
    sealed = seal_to(second.identity.box_key_b64, rogue.secret_context())
    fake.shares["bank-2"] = (sealed, {
        "X-Fedfraud-Publisher": "bank-fake", "X-Fedfraud-Key-Id": rogue.key_id,
        "X-Fedfraud-Signature": sign(intruder.identity.keys.signing, share_message("bank-fake", "bank-2", rogue.key_id, sealed)),
    })
    with pytest.raises(CeremonyError, match="not a member of the pinned roster"):
        fetch_share(second.client, second.identity, second.state)
    with pytest.raises(CeremonyError, match="not a member of the pinned roster"):
        check_consortium_key(second.client, second.identity, second.state, load_secret_scheme(second.state))

    # Publisher header claims bank-1, but bank-1 never signed this context.
    fake.context_headers["X-Fedfraud-Publisher"] = "bank-1"
    with pytest.raises(CeremonyError, match="not signed by bank-1"):
        fetch_share(second.client, second.identity, second.state)
    assert load_secret_scheme(second.state).key_id != rogue.key_id  # the real key is kept


def test_a_published_model_must_be_the_banks_own_and_signed_by_a_quorum(
    fake: FakeConsortium, keyed_banks: list[Bank]
) -> None:
    bank = keyed_banks[1]
    run_id = "run-x"
    digest = hashlib.sha256(MODEL).hexdigest()
    bank.state.update_run(run_id, {"status": "proposed", "model": "xgboost", "digest": digest})
    signed = {b.bank_id: b.identity.sign_proposal(run_id, MODEL) for b in keyed_banks}

    def publish(body: bytes, proposals: dict[str, str]) -> None:
        fake.model_files["1"] = body
        fake.models[:] = [{"version": 1, "run_id": run_id, "family": "xgboost",
                           "digest": hashlib.sha256(body).hexdigest(),
                           "proposals": [{"bank_id": b, "signature": s} for b, s in proposals.items()]}]

    agent = _agent(bank)
    # Two valid signatures; a third "signature" of bank-3 made by bank-1's key.
    forged = sign(keyed_banks[0].identity.keys.signing, proposal_message(run_id, "bank-3", MODEL))
    publish(MODEL, {"bank-1": signed["bank-1"], "bank-2": signed["bank-2"], "bank-3": forged})
    assert agent.sync_models() == []
    record = bank.state.run_record(run_id) or {}
    assert record["status"] == REFUSED and "only 2 pinned members" in record["reason"]
    assert not bank.state.model_path("1", "xgboost").exists()

    bank.state.update_run(run_id, {"status": "proposed"})
    poisoned = json.dumps({"poisoned": True}).encode()
    publish(poisoned, {b: keyed_banks[i].identity.sign_proposal(run_id, poisoned) for i, b in enumerate(signed)})
    assert agent.sync_models() == []
    assert "differs from the model this bank proposed" in (bank.state.run_record(run_id) or {})["reason"]

    bank.state.update_run(run_id, {"status": "proposed"})
    publish(MODEL, signed)
    (path,) = agent.sync_models()
    assert path.read_bytes() == MODEL and (bank.state.run_record(run_id) or {})["status"] == PUBLISHED


@pytest.mark.parametrize("lie", ["a version already kept", "another family"])
def test_the_host_cannot_overwrite_a_kept_model_by_the_version_or_family_it_publishes_under(
    fake: FakeConsortium, keyed_banks: list[Bank], lie: str
) -> None:
    """A node keeps each model at a file named by its version and family, and serves it only if
    the file's bytes are the ones it verified. The host publishes a later run's model (the bank's
    own, signed by a quorum) under the version of the model the node serves, or as the other
    family: saved, it would overwrite that file (or one of the other family), and the node would
    refuse its own served model at its next load."""
    bank = keyed_banks[1]
    later = json.dumps({"learner": {"trees": [4, 5]}}).encode()
    models = []
    for run_id, body in (("run-x", MODEL), ("run-y", later)):
        bank.state.update_run(run_id, {"status": "proposed", "model": "xgboost",
                                       "digest": hashlib.sha256(body).hexdigest()})
        fake.model_files[run_id] = body
        models.append({"run_id": run_id, "family": "xgboost", "digest": hashlib.sha256(body).hexdigest(),
                       "proposals": [{"bank_id": b.bank_id, "signature": b.identity.sign_proposal(run_id, body)}
                                     for b in keyed_banks]})
    models[0]["version"], models[1]["version"] = 1, 2
    fake.model_files["1"], fake.model_files["2"] = MODEL, later
    fake.models[:] = models[:1]
    agent = _agent(bank)
    (kept,) = agent.sync_models()
    assert kept == bank.state.model_path("1", "xgboost") and (bank.state.served_model("xgboost") or {})["version"] == "1"

    if lie == "a version already kept":
        models[1]["version"] = 1
        fake.model_files["1"] = later
        reason = "version 1 is already this node's model of run run-x"
    else:
        models[1]["family"] = "logreg"
        reason = "published as a logreg model; this bank proposed it in a run of xgboost"
    fake.models[:] = models
    assert agent.sync_models() == []
    record = bank.state.run_record("run-y") or {}
    assert record["status"] == REFUSED and reason in record["reason"], record
    assert kept.read_bytes() == MODEL  # the served model's file is untouched
    assert not bank.state.model_path("1", "logreg").exists() and not bank.state.model_path("2", "logreg").exists()
    assert (bank.state.served_model("xgboost") or {})["run_id"] == "run-x"


def test_removal_rotates_the_key_and_the_departed_bank_cannot_read_later_sums(
    fake: FakeConsortium, make_bank: Callable[[str], Bank]
) -> None:
    banks = [make_bank(f"bank-{i}") for i in range(1, 5)]
    pin_first_roster(banks)
    first, second, third, departed = banks
    publish_keys(first.client, first.identity, first.state, scheme="ckks")
    for bank in banks[1:]:
        fetch_share(bank.client, bank.identity, bank.state)
    old_key = load_secret_scheme(departed.state)

    removal = propose_roster(first.client, first.identity, first.state, add={}, remove=["bank-4"])
    for bank in (second, third):
        approve_roster(bank.client, bank.identity, bank.state, digest=removal.digest, fingerprints={})
    # The key every bank holds was also held by bank-4: nobody uses it any more.
    with pytest.raises(CeremonyError, match="must rotate"):
        check_consortium_key(second.client, second.identity, second.state, load_secret_scheme(second.state))

    rotated = publish_keys(first.client, first.identity, first.state, scheme="ckks", rotate=True)
    assert rotated.key_id != old_key.key_id and rotated.shared_with == ("bank-2", "bank-3")
    for bank in (second, third):
        assert fetch_share(bank.client, bank.identity, bank.state).key_id == rotated.key_id
        check_consortium_key(bank.client, bank.identity, bank.state, load_secret_scheme(bank.state))
    with pytest.raises(CeremonyError, match="removed"):
        fetch_share(departed.client, departed.identity, departed.state)
    assert "bank-4" not in fake.shares or fake.shares["bank-4"][1]["X-Fedfraud-Key-Id"] != rotated.key_id

    later_sum = crypto.load_context(fake.public_context or b"", require_public=True).encrypt(np.array([7.0, 11.0]))
    assert list(np.rint(load_secret_scheme(second.state).decrypt(later_sum))) == [7, 11]
    with pytest.raises(CryptoError):
        old_key.decrypt(later_sum)


def test_signatures_are_checked_with_pinned_keys_not_served_ones(fake: FakeConsortium, keyed_banks: list[Bank]) -> None:
    """The operator swaps bank-1's signing key in GET /v1/banks: nothing the bank relies on moves."""
    first, second, _ = keyed_banks
    served_before = {b: dict(info) for b, info in fake.banks.items()}
    fake.banks["bank-1"]["signing_key"] = base64.b64encode(bytes(32)).decode()
    check_consortium_key(second.client, second.identity, second.state, load_secret_scheme(second.state))
    pinned = load_pinned(second.state)
    assert pinned is not None
    assert pinned.roster.signing_keys()["bank-1"] == served_before["bank-1"]["signing_key"]


def _run_all(fake: FakeConsortium, keyed_banks: list[Bank], bank_transactions: dict[str, Any]) -> list[Any]:
    from bank_node.agent.training import training_rows
    from tests.bank_node.agent.conftest import TRAIN_DAYS, TRAIN_START

    rows = {b.bank_id: training_rows(bank_transactions[b.bank_id], train_start=TRAIN_START, train_days=TRAIN_DAYS)
            for b in keyed_banks}
    results: dict[str, Any] = {}

    def take_part(bank: Bank) -> None:
        agent = BankAgent(client=bank.client, identity=bank.identity, state=bank.state,
                          training_rows=lambda window, b=bank: rows[b.bank_id], settings=SETTINGS)
        results[bank.bank_id] = agent.run_once()

    threads = [threading.Thread(target=take_part, args=(bank,)) for bank in keyed_banks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return [o for found in results.values() for o in found]


def test_a_baseline_no_quorum_signed_is_not_compared_with(
    fake: FakeConsortium, keyed_banks: list[Bank], bank_transactions: dict[str, Any]
) -> None:
    """The operator serves a "current model" that only it vouches for, as the run's baseline:
    the banks refuse it before training, and say why (nothing is proposed)."""
    from tests.bank_node.agent.conftest import XGB_PARAMS

    rogue = json.dumps({"learner": {"trees": ["operator's"]}}).encode()
    fake.model_files["1"] = rogue
    fake.models[:] = [{"version": 1, "run_id": "run-0", "family": "xgboost",
                       "digest": hashlib.sha256(rogue).hexdigest(), "proposals": []}]
    window = {"as_of": "2018-06-12", "train_days": 7, "validation_days": 7, "label_delay_days": 0}
    run_id = fake.open_run("xgboost", XGB_PARAMS, window=window)
    fake.runs[run_id].baseline_version = 1
    outcomes = _run_all(fake, keyed_banks, bank_transactions)
    assert outcomes and all(o.status == FAILED for o in outcomes), outcomes
    assert all("baseline model 1 is signed by 0 pinned members" in o.message for o in outcomes)
    assert fake.runs[run_id].proposals == {} and fake.runs[run_id].state == "failed"
    assert all("baseline" in reason for reason in fake.runs[run_id].withdrawn.values())


@pytest.mark.parametrize("listed_family", ["logreg", "xgboost"])
def test_a_signed_baseline_of_another_family_is_refused_not_crashed_on(
    fake: FakeConsortium, keyed_banks: list[Bank], bank_transactions: dict[str, Any], listed_family: str
) -> None:
    """The operator names as an xgboost run's baseline a logistic model the banks did publish (so
    signed by all of them), listed as what it is or disguised as xgboost: every agent refuses it
    before any round and says why, instead of dying on the file."""
    from tests.bank_node.agent.conftest import XGB_PARAMS

    logistic = json.dumps({"model": "logistic_regression", "format_version": 1, "feature_names": [], "mean": [],
                           "scale": [], "coef": [], "intercept": 0.0}, sort_keys=True).encode()
    fake.model_files["1"] = logistic
    fake.models[:] = [{"version": 1, "run_id": "run-0", "family": listed_family,
                       "digest": hashlib.sha256(logistic).hexdigest(),
                       "proposals": [{"bank_id": b.bank_id, "signature": b.identity.sign_proposal("run-0", logistic)}
                                     for b in keyed_banks]}]
    window = {"as_of": "2018-06-12", "train_days": 7, "validation_days": 7, "label_delay_days": 0}
    run_id = fake.open_run("xgboost", XGB_PARAMS, window=window)
    fake.runs[run_id].baseline_version = 1
    outcomes = _run_all(fake, keyed_banks, bank_transactions)
    assert outcomes and all(o.status == FAILED for o in outcomes), outcomes
    expected = "is a logreg model" if listed_family == "logreg" else "is not a usable xgboost model"
    assert all(expected in o.message for o in outcomes), outcomes
    assert fake.runs[run_id].to_json()["rounds"] == [] and fake.runs[run_id].state == "failed"


def test_an_operator_tolerance_that_would_promote_anything_is_refused(
    fake: FakeConsortium, keyed_banks: list[Bank], bank_transactions: dict[str, Any]
) -> None:
    """The operator opens a run whose gate would accept a candidate 0.5 AUC worse: no bank signs
    up to that; each withdraws before any round, saying why."""
    from tests.bank_node.agent.conftest import XGB_PARAMS

    window = {"as_of": "2018-06-12", "train_days": 7, "validation_days": 7, "label_delay_days": 0}
    run_id = fake.open_run("xgboost", XGB_PARAMS, window=window)
    fake.runs[run_id].promotion_tolerance = 0.5
    outcomes = _run_all(fake, keyed_banks, bank_transactions)
    assert outcomes and all(o.status == FAILED and "accepts at most 0.05" in o.message for o in outcomes), outcomes
    assert fake.runs[run_id].to_json()["rounds"] == [] and fake.runs[run_id].state == "failed"


def test_a_model_the_banks_assessed_as_worse_is_not_counted_promoted_whatever_the_host_says(
    keyed_banks: list[Bank],
) -> None:
    from bank_node.agent.resources import ModelInfo

    bank = keyed_banks[0]
    agent = BankAgent(client=bank.client, identity=bank.identity, state=bank.state, training_rows=_no_rows,
                      settings=SETTINGS)
    lied = ModelInfo(version="2", run_id="run-2", model="xgboost", digest="", status="promoted")
    assert agent._promoted({"assessment": {"promote": False}}, lied) is False
    assert agent._promoted({"assessment": {"promote": True}}, lied) is True
    assert agent._promoted({"assessment": None}, lied) is True  # a family's first, ungated model


WINDOW = {"as_of": "2018-06-12", "train_days": 7, "validation_days": 7, "label_delay_days": 0}


def _served(keyed_banks: list[Bank]) -> set[str | None]:
    found = [b.state.served_model("xgboost") for b in keyed_banks]
    return {None if record is None else str(record["version"]) for record in found}


def _publish_served(fake: FakeConsortium, keyed_banks: list[Bank], bank_transactions: dict[str, Any]) -> str:
    """One gated run that every bank completes, published, and served by every bank."""
    from tests.bank_node.agent.conftest import XGB_PARAMS

    run_id = fake.open_run("xgboost", XGB_PARAMS, window=WINDOW)
    outcomes = _run_all(fake, keyed_banks, bank_transactions)
    assert [o.status for o in outcomes] == ["proposed"] * 3, outcomes
    _run_all(fake, keyed_banks, bank_transactions)  # every bank fetches the model once all proposed
    version = str(fake.models[-1]["version"])
    assert fake.models[-1]["run_id"] == run_id and _served(keyed_banks) == {version}
    return version


@pytest.mark.parametrize("skip", ["no validation days", "no baseline", "an older baseline"])
def test_the_operator_alone_cannot_replace_the_served_model_without_the_gate(
    fake: FakeConsortium, keyed_banks: list[Bank], bank_transactions: dict[str, Any], skip: str
) -> None:
    """Once the banks serve a model, the operator opens a run that would replace it unchecked: with
    no validation days (no assessment at all), with no baseline (the candidate judged alone), or
    against an older, weaker model than the one served. Every bank refuses before any round and
    says why; the served model stays."""
    from tests.bank_node.agent.conftest import XGB_PARAMS

    served = _publish_served(fake, keyed_banks, bank_transactions)
    if skip == "an older baseline":
        served = _publish_served(fake, keyed_banks, bank_transactions)
        run_id = fake.open_run("xgboost", XGB_PARAMS, window=WINDOW, baseline_version=1)
        expected = f"compares its candidate with model 1, older than model {served}, which this bank serves"
    elif skip == "no baseline":
        run_id = fake.open_run("xgboost", XGB_PARAMS, window=WINDOW, baseline_version=None)
        expected = f"names no baseline: its xgboost model would replace model {served}"
    else:
        run_id = fake.open_run("xgboost", XGB_PARAMS, window={**WINDOW, "validation_days": 0})
        expected = f"has no validation days: its xgboost model would replace model {served}"
    outcomes = _run_all(fake, keyed_banks, bank_transactions)
    assert outcomes and all(o.status == FAILED and expected in o.message for o in outcomes), outcomes
    assert fake.runs[run_id].to_json()["rounds"] == [] and fake.runs[run_id].state == "failed"
    # Each bank withdrew saying why, unless the others' withdrawals had already failed the run when it
    # looked (the banks run at once): then it recorded that failure, whose reason is theirs (above).
    run = fake.runs[run_id]
    assert set(run.withdrawn) <= {b.bank_id for b in keyed_banks}
    assert len(run.participants) - len(run.withdrawn) < run.min_banks
    assert all(expected in reason for reason in run.withdrawn.values())
    assert _served(keyed_banks) == {served}


def test_of_two_ungated_runs_opened_at_once_the_second_does_not_replace_the_first(
    fake: FakeConsortium, keyed_banks: list[Bank], bank_transactions: dict[str, Any]
) -> None:
    """Before the family has a model, the operator opens two runs without validation days at once
    (each is a "first" model when the banks look): the banks take part in both, but only the first
    published is served; the second would replace it without a gate, whatever the host says."""
    from tests.bank_node.agent.conftest import XGB_PARAMS

    ungated = {**WINDOW, "validation_days": 0}
    first, second = (fake.open_run("xgboost", XGB_PARAMS, window=ungated) for _ in range(2))
    assert {o.status for o in _run_all(fake, keyed_banks, bank_transactions)} == {"proposed"}
    _run_all(fake, keyed_banks, bank_transactions)
    versions = {m["run_id"]: str(m["version"]) for m in fake.models}
    assert set(versions) == {first, second}  # both published, and listed as promoted by the host
    for bank in keyed_banks:
        assert (bank.state.run_record(first) or {})["promoted"] is True
        assert (bank.state.run_record(second) or {})["promoted"] is False
    # The host's current model is the second; no bank serves it, having never counted it promoted.
    assert _served(keyed_banks) == {versions[first]}
