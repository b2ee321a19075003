"""The lockstep driver gives the banks the same sums as the threaded channel and counts the costs."""

from __future__ import annotations

import numpy as np
import pytest

import crypto
from bank_node.federated.inmemory import run_banks
from bank_node.federated.lockstep import OutOfStepError, run_lockstep
from bank_node.federated.logreg import federated_logreg
from bank_node.federated.rounds import SumRequest
from consortium.secure_sum import SecureSum


def banks_data() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(5)
    out = {}
    for i, n in enumerate((300, 700, 150)):
        X = rng.normal(size=(n, 4))
        y = (X[:, 0] + rng.normal(size=n) > 1.5).astype(float)
        out[f"bank-{i + 1}"] = (X, y)
    return out


def aggregator_for(secret: crypto.HEScheme) -> SecureSum:
    return SecureSum(context=crypto.load_context(secret.public_context(), require_public=True))


def test_lockstep_and_threads_train_the_same_model() -> None:
    secret = crypto.generate("plain")
    data = banks_data()
    contexts = dict.fromkeys(data, secret)
    lockstep = run_lockstep(
        {b: federated_logreg(X, y) for b, (X, y) in data.items()}, contexts=contexts, aggregator=aggregator_for(secret)
    )
    threaded, _ = run_banks(
        {b: (lambda X=X, y=y: federated_logreg(X, y)) for b, (X, y) in data.items()},
        contexts=contexts,
        aggregator=aggregator_for(secret),
    )
    assert lockstep.results == threaded


def test_costs_are_attributed_per_bank_and_activity() -> None:
    secret = crypto.generate("ckks")
    data = banks_data()
    rounds: list[str] = []
    run = run_lockstep(
        {b: federated_logreg(X, y) for b, (X, y) in data.items()},
        contexts=dict.fromkeys(data, secret),
        aggregator=aggregator_for(secret),
        on_round=rounds.append,
    )
    costs = run.costs
    assert costs.rounds == len(rounds) and rounds[0] == "logreg/counts"
    assert all(costs.encrypt_s[b] > 0 and costs.decrypt_s[b] > 0 for b in data)
    assert costs.aggregate_s > 0 and costs.parallel_s <= costs.wall_s
    # A CKKS ciphertext carries 2048 values at ~32 bytes each; small vectors pay for whole ones.
    assert costs.bytes_per_value > 32
    assert set(costs.uploaded_bytes.values()) == {costs.uploaded_bytes["bank-1"]}


def test_banks_that_diverge_are_detected() -> None:
    def asks(key: str):  # type: ignore[no-untyped-def]
        yield SumRequest(key, np.ones(2))

    secret = crypto.generate("plain")
    with pytest.raises(OutOfStepError, match="out of step"):
        run_lockstep(
            {"bank-1": asks("a"), "bank-2": asks("a"), "bank-3": asks("b")},
            contexts=dict.fromkeys(["bank-1", "bank-2", "bank-3"], secret),
            aggregator=aggregator_for(secret),
        )
