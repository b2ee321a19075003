"""Fixtures: a fake consortium served over real HTTP, enrolled banks, and their transactions."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from bank_node.agent.ceremony import fetch_share, publish_keys
from bank_node.agent.client import ConsortiumClient
from bank_node.agent.enrolment import enrol
from bank_node.agent.identity import BankIdentity
from bank_node.agent.membership import approve_roster, propose_roster, sync_roster
from bank_node.agent.retry import RetryPolicy
from bank_node.agent.runner import AgentSettings
from bank_node.agent.state import StateDir
from bank_node.generator import generate_transactions
from crypto.roster import Roster
from fedfraud.simulation import partition_customers
from schemas.transaction import to_canonical
from tests.bank_node.agent.fake_consortium import FakeConsortium, serve

BANK_IDS = ("bank-1", "bank-2", "bank-3")
TRAIN_START = date(2018, 5, 15)
TRAIN_DAYS = 14
#: Quick retries: the tests must not sleep for real.
FAST_RETRY = RetryPolicy(max_attempts=4, base_delay_s=0.01, max_delay_s=0.05, total_timeout_s=5.0)
#: Quick polls of open rounds, and a bounded wait for each sum.
# The fake consortium's banks share a fast plaintext key: development mode.
SETTINGS = AgentSettings(poll_interval_s=0.05, round_wait_s=30.0, sum_poll_initial_s=0.005, sum_poll_max_s=0.05,
                         development=True, require_ledger=False)  # the fake consortium keeps no ledger
#: A small forest: enough to exercise several levels and trees, fast.
XGB_PARAMS = {"n_trees": 3, "max_depth": 2, "eta": 0.3, "n_bins": 16, "seed": 0}


@dataclass
class Bank:
    """One enrolled bank node: its id, state directory, keys and client."""

    bank_id: str
    state: StateDir
    identity: BankIdentity
    client: ConsortiumClient
    token: str

    def new_client(self, url: str, **kwargs: object) -> ConsortiumClient:
        """A second client for the same bank (an agent process after a restart)."""
        return ConsortiumClient(base_url=url, token=self.token, retry=FAST_RETRY, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def fake() -> FakeConsortium:
    return FakeConsortium()


@pytest.fixture
def url(fake: FakeConsortium) -> Iterator[str]:
    with serve(fake) as base_url:
        yield base_url


@pytest.fixture
def make_bank(fake: FakeConsortium, url: str, tmp_path: Path) -> Iterator[Callable[[str], Bank]]:
    clients: list[ConsortiumClient] = []

    def make(bank_id: str) -> Bank:
        token = fake.enrol(bank_id)
        state = StateDir(tmp_path / bank_id)
        client = ConsortiumClient(base_url=url, token=token, retry=FAST_RETRY)
        clients.append(client)
        identity = enrol(state, url=url, bank_id=bank_id, token=token, client=client)
        return Bank(bank_id=bank_id, state=state, identity=identity, client=client, token=token)

    yield make
    for client in clients:
        client.close()


def pin_first_roster(banks: list[Bank]) -> Roster:
    """The founding banks agree their first roster: the first proposes it with the others'
    fingerprints (as read out to its staff), each other bank approves it with the fingerprints of
    the rest; every bank then holds it pinned."""
    first, *others = banks
    roster = propose_roster(first.client, first.identity, first.state,
                            add={b.bank_id: b.identity.fingerprint for b in others})
    for bank in others:
        fingerprints = {b.bank_id: b.identity.fingerprint for b in banks if b is not bank}
        approve_roster(bank.client, bank.identity, bank.state, digest=roster.digest, fingerprints=fingerprints)
    for bank in banks:
        pinned = sync_roster(bank.client, bank.identity, bank.state)
        assert pinned is not None and pinned.roster.digest == roster.digest
    return roster


@pytest.fixture
def enrolled_banks(make_bank: Callable[[str], Bank]) -> list[Bank]:
    """Three enrolled banks with registered keys, before they agree a roster."""
    return [make_bank(bank_id) for bank_id in BANK_IDS]


@pytest.fixture
def banks(enrolled_banks: list[Bank]) -> list[Bank]:
    """Three banks that pinned their first roster, before the key ceremony."""
    pin_first_roster(enrolled_banks)
    return enrolled_banks


@pytest.fixture
def keyed_banks(banks: list[Bank]) -> list[Bank]:
    """Three banks sharing a plaintext-scheme key through the ceremony (fast)."""
    first, *others = banks
    publish_keys(first.client, first.identity, first.state, scheme="plain")
    for bank in others:
        fetch_share(bank.client, bank.identity, bank.state)
    return banks


@pytest.fixture(scope="session")
def transactions() -> pd.DataFrame:
    """Six weeks of simulated card transactions, in canonical columns."""
    raw = generate_transactions(n_customers=600, n_terminals=1000, days=60, seed=7, start_date="2018-04-01")
    return to_canonical(raw, None, require_label=True)


@pytest.fixture(scope="session")
def bank_transactions(transactions: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Each bank's own cards' transactions (uneven shares)."""
    owner = partition_customers(transactions["customer_id"], (0.45, 0.33, 0.22), seed=0)
    return {bank_id: transactions[owner == i].reset_index(drop=True) for i, bank_id in enumerate(BANK_IDS)}
