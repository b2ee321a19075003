"""The HTTP channel: contribute, wait while the round is open, survive restarts and 503s, report failures."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from bank_node.agent.ceremony import load_secret_scheme
from bank_node.agent.errors import RoundFailedError, RoundTimeoutError
from bank_node.agent.http_channel import HttpChannel
from bank_node.federated.rounds import RoundFailedError as ProtocolRoundFailed
from tests.bank_node.agent.conftest import Bank
from tests.bank_node.agent.fake_consortium import FakeConsortium

KEY = "gbdt/tree-0/level-1"


def channel(bank: Bank, run_id: str, **kwargs: object) -> HttpChannel:
    options: dict[str, object] = {"timeout_s": 20.0, "poll_initial_s": 0.01, "poll_max_s": 0.05, **kwargs}
    return HttpChannel(client=bank.client, identity=bank.identity, run_id=run_id, **options)  # type: ignore[arg-type]


PARTICIPANTS = frozenset({"bank-1", "bank-2", "bank-3"})


def encrypt(bank: Bank, values: list[float]) -> bytes:
    return load_secret_scheme(bank.state).encrypt(np.array(values))


def exchange_in_thread(bank: Bank, chan: HttpChannel, payload: bytes) -> tuple[threading.Thread, dict[str, object]]:
    out: dict[str, object] = {}

    def work() -> None:
        try:
            out["sum"] = chan.exchange(KEY, bank.bank_id, payload, n_values=2, participants=PARTICIPANTS)
        except Exception as exc:  # noqa: BLE001 - reported to the test
            out["error"] = exc

    thread = threading.Thread(target=work)
    thread.start()
    return thread, out


def wait_until(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_waits_while_the_round_is_open_then_returns_the_sum(fake: FakeConsortium, keyed_banks: list[Bank]) -> None:
    first, second, third = keyed_banks
    run_id = fake.open_run("xgboost", {})
    waiting = channel(first, run_id)
    thread, out = exchange_in_thread(first, waiting, encrypt(first, [1.0, 2.0]))
    wait_until(lambda: fake.count("GET", "/aggregates/", 202) >= 2)

    others = [exchange_in_thread(b, channel(b, run_id), encrypt(b, v))
              for b, v in ((second, [10.0, 20.0]), (third, [100.0, 200.0]))]
    for other, _ in others:
        other.join(10)
    thread.join(10)

    assert "error" not in out
    assert list(load_secret_scheme(first.state).decrypt(out["sum"].payload)) == [111.0, 222.0]  # type: ignore[arg-type]
    assert waiting.stats.polls >= 3 and waiting.stats.contributed == 1


def test_a_restarted_bank_gets_the_released_sum_of_a_round_it_already_fed(
    fake: FakeConsortium, keyed_banks: list[Bank], url: str
) -> None:
    run_id = fake.open_run("xgboost", {})
    started = [exchange_in_thread(b, channel(b, run_id), encrypt(b, [float(i), 1.0]))
               for i, b in enumerate(keyed_banks)]
    for thread, _ in started:
        thread.join(10)
    sums = [out["sum"] for _, out in started]
    first = keyed_banks[0]

    # The agent restarts: new process, new client, a fresh encryption of the same vector.
    first.client = first.new_client(url)
    again = channel(first, run_id)
    replayed = again.exchange(KEY, first.bank_id, encrypt(first, [0.0, 1.0]), n_values=2, participants=PARTICIPANTS)

    assert replayed == sums[0] == sums[1] == sums[2]
    assert list(load_secret_scheme(first.state).decrypt(replayed.payload)) == [3.0, 3.0]
    assert again.stats.replayed == 1 and again.stats.contributed == 0
    assert fake.count("PUT", "/contributions/", 409) == 1


def test_503_while_contributing_and_polling_is_retried(fake: FakeConsortium, keyed_banks: list[Bank]) -> None:
    run_id = fake.open_run("xgboost", {})
    fake.fail_next("PUT", f"/v1/runs/{run_id}/contributions/", 503, times=2)
    fake.fail_next("GET", f"/v1/runs/{run_id}/aggregates/", 503, times=2)
    results = []
    threads = []
    for bank in keyed_banks:
        thread, out = exchange_in_thread(bank, channel(bank, run_id), encrypt(bank, [1.0, 1.0]))
        threads.append(thread)
        results.append(out)
    for thread in threads:
        thread.join(20)

    assert all("error" not in out for out in results), results
    assert {out["sum"].payload for out in results} == {results[0]["sum"].payload}  # type: ignore[arg-type]
    assert fake.count("PUT", "/contributions/", 503) == 2 and fake.count("GET", "/aggregates/", 503) == 2


def test_a_failed_round_raises_with_the_servers_reason(fake: FakeConsortium, keyed_banks: list[Bank]) -> None:
    first = keyed_banks[0]
    run_id = fake.open_run("xgboost", {})
    thread, out = exchange_in_thread(first, channel(first, run_id), encrypt(first, [1.0, 2.0]))
    wait_until(lambda: fake.count("GET", "/aggregates/", 202) >= 1)

    fake.fail_round(run_id, KEY)
    thread.join(10)

    error = out["error"]
    assert isinstance(error, RoundFailedError) and isinstance(error, ProtocolRoundFailed)
    assert error.status == 409
    assert "1 of 3 banks contributed, fewer than the quorum of 3" in str(error)
    assert error.document.get("dropped") == ["bank-2", "bank-3"]


def test_the_wait_for_a_sum_is_bounded(fake: FakeConsortium, keyed_banks: list[Bank]) -> None:
    first = keyed_banks[0]
    run_id = fake.open_run("xgboost", {})
    now = [0.0]
    impatient = channel(first, run_id, timeout_s=1.0, sleep=lambda s: now.__setitem__(0, now[0] + s),
                        clock=lambda: now[0])

    with pytest.raises(RoundTimeoutError, match=r"1 of 3 banks contributed") as caught:
        impatient.exchange(KEY, first.bank_id, encrypt(first, [1.0, 2.0]), n_values=2, participants=PARTICIPANTS)
    assert caught.value.retryable and now[0] <= 1.0


def test_a_channel_only_sends_as_its_own_bank(fake: FakeConsortium, keyed_banks: list[Bank]) -> None:
    with pytest.raises(ValueError, match="sends as bank 'bank-1'"):
        channel(keyed_banks[0], "run-1").exchange(KEY, "bank-2", b"", n_values=0, participants=PARTICIPANTS)


def test_a_note_whose_signature_does_not_verify_is_ignored(fake: FakeConsortium, keyed_banks: list[Bank]) -> None:
    run_id = fake.open_run("xgboost", {})
    started = [exchange_in_thread(bank, channel(bank, run_id), encrypt(bank, [1.0, 2.0])) for bank in keyed_banks]
    for thread, _ in started:
        thread.join(10)
    first, second, third = keyed_banks
    keys = {bank.bank_id: bank.identity.signing_key_b64 for bank in keyed_banks}
    seed = bytes(32)
    for bank in (second, third):
        bank.client.put_note(run_id, KEY, seed, signature=bank.identity.sign_note(run_id, KEY, seed))
    # the aggregator serves bank-3's note under a signature bank-3 did not make
    fake.note_signatures[(run_id, KEY, third.bank_id)] = second.identity.sign_note(run_id, KEY, seed)
    notes = channel(first, run_id, timeout_s=0.5, signing_keys=keys).reveal(
        KEY, first.bank_id, bytes(range(32)), expected=PARTICIPANTS
    )
    assert set(notes) == {first.bank_id, second.bank_id}
