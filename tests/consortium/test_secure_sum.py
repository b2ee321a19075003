"""The aggregator's rounds: sums only with a quorum, one contribution per bank, nothing else kept."""

from __future__ import annotations

import numpy as np
import pytest

import crypto
from consortium.secure_sum import (
    InvalidContributionError,
    NotAParticipantError,
    ReplayError,
    RoundClosedError,
    RoundState,
    SecureSum,
    UnknownRoundError,
)

BANKS = ("bank-1", "bank-2", "bank-3", "bank-4")


@pytest.fixture(scope="module")
def secret() -> crypto.HEScheme:
    return crypto.generate("ckks", scale_bits=30)


@pytest.fixture()
def aggregator(secret: crypto.HEScheme) -> SecureSum:
    return SecureSum(context=crypto.load_context(secret.public_context()))


def test_refuses_a_context_that_holds_the_secret_key(secret: crypto.HEScheme) -> None:
    with pytest.raises(ValueError, match="public context only"):
        SecureSum(context=secret)


def test_sum_is_released_once_every_participant_contributed(secret: crypto.HEScheme, aggregator: SecureSum) -> None:
    vectors = {bank: np.full(5, float(i + 1)) for i, bank in enumerate(BANKS)}
    aggregator.open("r", participants=BANKS, n_values=5)
    for bank in BANKS[:-1]:
        aggregator.contribute("r", bank, secret.encrypt(vectors[bank]))
        assert aggregator.released("r") is None
    aggregator.contribute("r", BANKS[-1], secret.encrypt(vectors[BANKS[-1]]))
    summed = aggregator.released("r")
    assert summed is not None
    np.testing.assert_allclose(secret.decrypt(summed), np.full(5, 10.0), atol=1e-4)


def test_two_banks_never_release_a_sum(secret: crypto.HEScheme, aggregator: SecureSum) -> None:
    aggregator.open("r", participants=BANKS, n_values=3)
    aggregator.contribute("r", "bank-1", secret.encrypt(np.ones(3)))
    aggregator.contribute("r", "bank-2", secret.encrypt(np.ones(3)))
    closed = aggregator.close("r")
    assert closed.state is RoundState.FAILED
    assert aggregator.released("r") is None
    assert closed.dropped == {"bank-3", "bank-4"}
    assert "quorum" in closed.reason
    assert closed.contributions == {}  # the two ciphertexts are not kept either


def test_deadline_with_quorum_releases_and_records_dropouts(secret: crypto.HEScheme, aggregator: SecureSum) -> None:
    aggregator.open("r", participants=BANKS, n_values=2)
    for bank in BANKS[:3]:
        aggregator.contribute("r", bank, secret.encrypt(np.array([1.0, 2.0])))
    closed = aggregator.close("r")
    assert closed.state is RoundState.RELEASED and closed.dropped == {"bank-4"}
    np.testing.assert_allclose(secret.decrypt(aggregator.released("r") or b""), [3.0, 6.0], atol=1e-4)
    with pytest.raises(RoundClosedError):
        aggregator.contribute("r", "bank-4", secret.encrypt(np.array([1.0, 2.0])))


def test_bad_contributions_are_refused_and_not_stored(secret: crypto.HEScheme, aggregator: SecureSum) -> None:
    aggregator.open("r", participants=BANKS, n_values=4)
    good = secret.encrypt(np.ones(4))
    with pytest.raises(UnknownRoundError):
        aggregator.contribute("nope", "bank-1", good)
    with pytest.raises(NotAParticipantError):
        aggregator.contribute("r", "bank-9", good)
    with pytest.raises(InvalidContributionError, match="expects 4"):
        aggregator.contribute("r", "bank-1", secret.encrypt(np.ones(5)))
    with pytest.raises(InvalidContributionError, match="truncated"):
        aggregator.contribute("r", "bank-1", good[:-10])
    other_key = crypto.generate("ckks")
    with pytest.raises(InvalidContributionError, match="key"):
        aggregator.contribute("r", "bank-1", other_key.encrypt(np.ones(4)))
    with pytest.raises(InvalidContributionError, match="scheme"):
        aggregator.contribute("r", "bank-1", crypto.generate("plain").encrypt(np.ones(4)))
    assert aggregator.get("r").contributions == {}
    aggregator.contribute("r", "bank-1", good)
    with pytest.raises(ReplayError):
        aggregator.contribute("r", "bank-1", good)


def test_quorum_below_three_is_refused(secret: crypto.HEScheme) -> None:
    public = crypto.load_context(secret.public_context())
    for quorum in (1, 2):
        with pytest.raises(ValueError, match="at least 3"):
            SecureSum(context=public, min_banks=quorum)
        with pytest.raises(ValueError, match="at least 3"):
            SecureSum(context=public).open("r", participants=BANKS, n_values=1, min_banks=quorum)
    with pytest.raises(ValueError, match="fewer than the quorum"):
        SecureSum(context=public).open("r", participants=BANKS[:2], n_values=1)
