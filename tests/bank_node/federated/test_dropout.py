"""A bank that drops out, before or after uploading masked contributions, costs the others a
restart, and they end with the model they would have trained without it from the start. A bank
never reveals its self mask for a sum that lacks a participant."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import pytest

import crypto
from bank_node.federated.gbdt import federated_gbdt
from bank_node.federated.inmemory import InMemoryChannel, run_banks
from bank_node.federated.params import GBDTParams
from bank_node.federated.rounds import BankRunner, simulated_mask_sessions
from consortium.secure_sum import SecureSum

BANKS = ("bank-1", "bank-2", "bank-3", "bank-4")


class _Vanished(Exception):
    """The dropping bank's process is gone."""


class _Dropping:
    """Bank-4's transport: the bank is gone after (or before) its first upload reaches the aggregator."""

    def __init__(self, channel: InMemoryChannel, *, uploads: bool) -> None:
        self.channel = channel
        self.uploads = uploads

    def exchange(self, key, bank, payload, *, n_values, participants):  # type: ignore[no-untyped-def]
        if self.uploads:
            threading.Thread(
                target=lambda: self.channel.exchange(key, bank, payload, n_values=n_values, participants=participants),
                daemon=True,
            ).start()
        raise _Vanished

    def reveal(self, key, bank, seed, *, expected):  # type: ignore[no-untyped-def]
        raise AssertionError("a vanished bank reveals nothing")


@pytest.mark.parametrize("uploads", [True, False], ids=["after-upload", "before-upload"])
def test_a_bank_that_drops_out_leaves_the_model_of_a_run_without_it(gbdt_data, uploads: bool) -> None:  # type: ignore[no-untyped-def]
    secret = crypto.generate("ckks")
    params = GBDTParams(n_trees=3, max_depth=3, eta=0.3, n_bins=32)
    public = crypto.load_context(secret.public_context(), require_public=True)

    def factory(i: int):  # type: ignore[no-untyped-def]
        rows = gbdt_data.parties[i]
        return lambda: federated_gbdt(gbdt_data.X[rows], gbdt_data.y[rows], params=params, scales=gbdt_data.scales, party_index=i)

    without, _ = run_banks({bank: factory(i) for i, bank in enumerate(BANKS[:3])},
                           contexts=dict.fromkeys(BANKS[:3], secret), aggregator=SecureSum(context=public))

    aggregator = SecureSum(context=public)
    channel = InMemoryChannel(aggregator=aggregator, participants=BANKS, timeout_s=2.0)
    sessions = simulated_mask_sessions(BANKS, "run-dropout")
    results: dict[str, object] = {}
    restarts: dict[str, list[int]] = {}
    runners = {
        bank: BankRunner(bank=bank, context=secret, channel=channel if bank != "bank-4" else _Dropping(channel, uploads=uploads),
                         masks=sessions[bank], participants=BANKS,
                         on_restart=lambda epoch, bank=bank: restarts.setdefault(bank, []).append(epoch))
        for bank in BANKS
    }

    def run(i: int, bank: str) -> None:
        try:
            results[bank] = runners[bank].run(factory(i))
        except _Vanished:
            results[bank] = None

    threads = [threading.Thread(target=run, args=(i, bank)) for i, bank in enumerate(BANKS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    first = aggregator.get(next(key for key in aggregator.keys() if key.startswith("gbdt/bins/")))
    if uploads:
        assert first.summed == frozenset(BANKS)  # bank-4's masked counts were in the released sum
        assert set(first.notes) == set(BANKS[:3])  # ... but it never revealed its self mask
    else:
        # released at the deadline without bank-4: no bank reveals a self mask for an incomplete sum
        assert first.summed == frozenset(BANKS[:3])
        assert first.notes == {}
    assert results["bank-4"] is None
    for bank in BANKS[:3]:
        model = results[bank]
        assert runners[bank].ledger.epochs == 2
        assert restarts[bank] == [1]  # told before starting over (a private run is charged again)
        reference = without["bank-1"]
        assert [t.feature.tolist() for t in model.trees] == [t.feature.tolist() for t in reference.trees]  # type: ignore[attr-defined]
        for ours, theirs in zip(model.trees, reference.trees, strict=True):  # type: ignore[attr-defined]
            np.testing.assert_array_equal(ours.threshold, theirs.threshold)
            np.testing.assert_array_equal(ours.value, theirs.value)


def test_an_algorithm_started_over_sees_the_banks_of_its_epoch() -> None:
    """What lets the nightly terminal pooling decide, per epoch, which held days were pooled with a
    bank that has since dropped out (``bank_node/agent/terminals.py``)."""
    from bank_node.federated.rounds import SumRequest

    secret = crypto.generate("plain")
    aggregator = SecureSum(context=crypto.load_context(secret.public_context(), require_public=True))
    channel = InMemoryChannel(aggregator=aggregator, participants=BANKS, timeout_s=2.0)
    sessions = simulated_mask_sessions(BANKS, "run-epochs")
    runners = {bank: BankRunner(bank=bank, context=secret, masks=sessions[bank], participants=BANKS,
                                channel=channel if bank != "bank-4" else _Dropping(channel, uploads=False))
               for bank in BANKS}
    seen: dict[str, list[frozenset[str]]] = {bank: [] for bank in BANKS}

    def factory(bank: str):  # type: ignore[no-untyped-def]
        def algorithm():  # type: ignore[no-untyped-def]
            seen[bank].append(runners[bank].epoch_participants)
            total = yield SumRequest("plan", np.ones(2))
            return total
        return algorithm

    _every_bank(lambda bank: runners[bank].run(factory(bank)))
    for bank in BANKS[:3]:
        assert seen[bank] == [frozenset(BANKS), frozenset(BANKS[:3])]


def test_the_next_algorithm_of_a_run_goes_on_without_a_bank_that_dropped_out() -> None:
    """A run's algorithms share one runner (terminal statistics, training, gate): after a dropout in
    one, the next starts with the banks and the epoch it ended with; it neither waits for the
    dropped bank again nor starts over (a private run would be charged again for nothing)."""
    from bank_node.federated.rounds import SumRequest

    secret = crypto.generate("plain")
    aggregator = SecureSum(context=crypto.load_context(secret.public_context(), require_public=True))
    channel = InMemoryChannel(aggregator=aggregator, participants=BANKS, timeout_s=2.0)
    sessions = simulated_mask_sessions(BANKS, "run-next")
    restarts: dict[str, list[int]] = {bank: [] for bank in BANKS}
    runners = {bank: BankRunner(bank=bank, context=secret, masks=sessions[bank], participants=BANKS,
                                channel=channel if bank != "bank-4" else _Dropping(channel, uploads=False),
                                on_restart=restarts[bank].append)
               for bank in BANKS}
    sums: dict[str, list[float]] = {bank: [] for bank in BANKS}

    def algorithm(key: str):  # type: ignore[no-untyped-def]
        def run():  # type: ignore[no-untyped-def]
            total = yield SumRequest(key, np.ones(2))
            return float(total[0])
        return run

    def run(bank: str) -> None:
        sums[bank].append(runners[bank].run(algorithm("training")))
        sums[bank].append(runners[bank].run(algorithm("gate")))

    _every_bank(run)
    gate_keys = [key for key in aggregator.keys() if "gate" in key]
    assert len(gate_keys) == 1 and aggregator.get(gate_keys[0]).summed == frozenset(BANKS[:3])
    for bank in BANKS[:3]:
        assert sums[bank] == [3.0, 3.0]
        assert restarts[bank] == [1]  # the training's restart only
        assert runners[bank].ledger.epochs == 2 and runners[bank].epoch_participants == frozenset(BANKS[:3])


def _every_bank(work: Callable[[str], object]) -> None:
    """``work`` for every bank at once, each in its thread; bank-4's vanishing ends only its own."""
    def one(bank: str) -> None:
        try:
            work(bank)
        except _Vanished:
            pass

    threads = [threading.Thread(target=one, args=(bank,)) for bank in BANKS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
