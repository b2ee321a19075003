"""A curious aggregator holding every stored ciphertext, together with one bank's secret material
(the HE secret key, its box key, its self-mask secret), learns nothing of another bank's
contribution; the banks' sum still opens exactly."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

import crypto
from bank_node.federated.rounds import MaskedSum, Released, SumRequest, simulated_mask_sessions
from consortium.secure_sum import SecureSum
from crypto.masking import FixedPoint, expand

BANKS = ("bank-1", "bank-2", "bank-3", "bank-4")
N_VALUES = 4000


@pytest.fixture(scope="module")
def secret() -> crypto.HEScheme:
    return crypto.generate("ckks")


def _stored_round(secret: crypto.HEScheme, vectors: dict[str, np.ndarray], run_id: str):  # type: ignore[no-untyped-def]
    sessions = simulated_mask_sessions(BANKS, run_id)
    aggregator = SecureSum(context=crypto.load_context(secret.public_context(), require_public=True))
    aggregator.open("r", participants=BANKS, n_values=N_VALUES + 1)
    stored = {}
    for bank in BANKS:
        sealer = MaskedSum(context=secret, masks=sessions[bank])
        payload = sealer.seal(SumRequest("r", vectors[bank], scale=2.0**10), label="r", participants=frozenset(BANKS))
        stored[bank] = payload
        current = aggregator.contribute("r", bank, payload)
    return sessions, aggregator, stored, current


def test_aggregator_and_one_bank_see_uniform_noise_but_the_sum_opens_exactly(secret: crypto.HEScheme) -> None:
    rng = np.random.default_rng(7)
    vectors = {bank: rng.normal(50.0, 20.0, N_VALUES).round(3) for bank in BANKS}
    vectors["bank-2"] = np.linspace(0.0, 1000.0, N_VALUES)  # the target: strongly structured data
    sessions, aggregator, stored, current = _stored_round(secret, vectors, "run-collusion")
    codec = FixedPoint()

    # The coalition: the HE secret key decrypts bank-2's stored ciphertext; bank-1 removes the
    # pairwise mask it shares with bank-2. What remains is still masked by bank-2's self mask and
    # its pairwise masks with bank-3 and bank-4.
    seen = codec.from_decrypted(secret.decrypt(stored["bank-2"]))
    shared = expand(sessions["bank-1"].pair_seed("bank-2", "r"), N_VALUES + 1, codec.modulus_bits)
    residue = (seen + shared) & codec.mask  # bank-1 < bank-2, so bank-2 subtracted it
    uniform = residue[:-1].astype(np.float64) / codec.modulus
    assert stats.kstest(uniform, "uniform").pvalue > 1e-3
    truth = codec.encode(vectors["bank-2"], scale=2.0**10).astype(np.float64)
    assert abs(np.corrcoef(uniform, truth)[0, 1]) < 0.06
    # the same view for an all-zero contribution is just as uniform: the bytes say nothing of the data
    zeros = dict(vectors, **{"bank-2": np.zeros(N_VALUES)})
    _, _, stored_zero, _ = _stored_round(secret, zeros, "run-collusion-zero")
    other = codec.from_decrypted(secret.decrypt(stored_zero["bank-2"]))[:-1].astype(np.float64) / codec.modulus
    assert stats.ks_2samp(uniform, other).pvalue > 1e-3

    # ... while the banks, once every self-mask seed is revealed, open the exact sum.
    released = Released(payload=current.aggregate, contributors=current.summed)
    seeds = {bank: sessions[bank].self_seed("r") for bank in BANKS}
    opened = MaskedSum(context=secret, masks=sessions["bank-3"]).open(
        released, seeds, label="r", participants=frozenset(BANKS), scale=2.0**10
    )
    expected = sum(np.rint(vectors[bank] * 2.0**10) for bank in BANKS) / 2.0**10
    np.testing.assert_array_equal(opened, expected)


def test_a_sum_of_fewer_banks_than_the_quorum_is_refused_by_the_bank(secret: crypto.HEScheme) -> None:
    sessions = simulated_mask_sessions(BANKS, "run-two")
    sealer = MaskedSum(context=secret, masks=sessions["bank-1"])
    two = secret.aggregate([secret.encrypt(np.zeros(3)), secret.encrypt(np.zeros(3))])
    with pytest.raises(Exception, match="fewer than this bank's quorum of 3"):
        sealer.check_released(Released(two, frozenset({"bank-1", "bank-2"})), label="r", participants=frozenset(BANKS))
    with pytest.raises(ValueError, match="at least 3"):
        MaskedSum(context=secret, masks=sessions["bank-1"], quorum=2)
