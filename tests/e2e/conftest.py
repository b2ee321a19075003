"""Real processes on 127.0.0.1: one consortium aggregator and one agent per bank, via the CLI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fedfraud.localnet import LocalConsortium

BANKS = ("bank-1", "bank-2", "bank-3")


@pytest.fixture(scope="session")
def bank_ids() -> tuple[str, ...]:
    """The banks every end-to-end consortium enrols."""
    return BANKS


@pytest.fixture()
def consortium(tmp_path: Path) -> Iterator[LocalConsortium]:
    """An initialised aggregator with an operator and three enrolled banks, serving."""
    local = LocalConsortium(root=tmp_path / "consortium")
    local.initialise(BANKS)
    local.start()
    try:
        yield local
    finally:
        local.stop()
