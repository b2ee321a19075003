"""Consortium terminal statistics over real HTTP: the protocol needs nothing new from the aggregator."""

from __future__ import annotations

import secrets
import threading

import numpy as np
import pandas as pd

from bank_node.agent.ceremony import load_secret_scheme
from bank_node.agent.http_channel import HttpChannel
from bank_node.features import compute_features
from bank_node.federated.rounds import BankRunner
from crypto.masking import MaskSession
from bank_node.federated.terminal_stats import (
    ConsortiumHistory,
    TerminalStatsConfig,
    consortium_history,
    events_by_day,
    history_days,
    with_consortium_terminal_features,
)
from consortium.api.runs import MAX_ROUND_KEY, ROUND_KEY_PATTERN
from tests.bank_node.agent.conftest import Bank
from tests.bank_node.agent.fake_consortium import FakeConsortium

FIRST, LAST = "2018-05-20", "2018-05-24"


def test_three_banks_decode_the_same_history_over_http(
    fake: FakeConsortium, keyed_banks: list[Bank], bank_transactions: dict[str, pd.DataFrame],
    transactions: pd.DataFrame,
) -> None:
    run_id = fake.open_run("terminal-stats", {})
    key = secrets.token_bytes(32)
    days = history_days(FIRST, LAST)
    # Small chunks: a day's table takes several rounds, as a large consortium's would.
    config = TerminalStatsConfig(threshold=2, chunk_values=4_000)
    results: dict[str, ConsortiumHistory] = {}
    errors: list[BaseException] = []

    def take_part(bank: Bank) -> None:
        try:
            others = [b for b in keyed_banks if b.bank_id != bank.bank_id]
            chan = HttpChannel(client=bank.client, identity=bank.identity, run_id=run_id, timeout_s=60.0,
                               poll_initial_s=0.005, poll_max_s=0.05,
                               signing_keys={b.bank_id: b.identity.signing_key_b64 for b in keyed_banks})
            masks = MaskSession(bank_id=bank.bank_id, box_key=bank.identity.keys.box, run_id=run_id,
                                peers={b.bank_id: bytes(b.identity.keys.box.public_key) for b in others},
                                self_secret=secrets.token_bytes(32))
            runner = BankRunner(bank=bank.bank_id, context=load_secret_scheme(bank.state), channel=chan, masks=masks,
                                participants=[b.bank_id for b in keyed_banks])
            events = events_by_day(bank_transactions[bank.bank_id], key, days)
            results[bank.bank_id] = runner.run(consortium_history(events, secret=key, config=config))
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            errors.append(exc)

    threads = [threading.Thread(target=take_part, args=(bank,)) for bank in keyed_banks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert not errors, errors
    histories = [results[b.bank_id] for b in keyed_banks]
    assert all(np.array_equal(h.tag, histories[0].tag) and np.array_equal(h.time_ns, histories[0].time_ns)
               for h in histories)

    # Every round key is one the real aggregator accepts.
    rounds = fake.runs[run_id].to_json()["rounds"]
    assert len(rounds) > 2 + len(days)  # sizes, sketch, presence, and each day in several chunks
    assert all(r["state"] == "released" and r["contributors"] == 3 for r in rounds)
    assert all(ROUND_KEY_PATTERN.match(r["key"]) and len(r["key"]) <= MAX_ROUND_KEY for r in rounds), rounds

    # The HTTP history gives each bank the pooled windows, as in one process.
    pooled = compute_features(transactions, start=FIRST, end=LAST).set_index("transaction_id")
    for bank in keyed_banks:
        local = compute_features(bank_transactions[bank.bank_id], start=FIRST, end=LAST)
        shared, covered = with_consortium_terminal_features(local, results[bank.bank_id], secret=key)
        assert covered.mean() > 0.5
        truth = pooled.loc[shared["transaction_id"], "TERMINAL_ID_NB_TX_30DAY_WINDOW"].to_numpy()
        assert np.array_equal(shared["TERMINAL_ID_NB_TX_30DAY_WINDOW"].to_numpy()[covered], truth[covered])
