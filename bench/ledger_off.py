"""The ``fedfraud`` command with the consortium's contribution ledger switched off, for
``bench/ledger_overhead.py`` only: the product has no such switch (a consortium that could run
without its ledger would let its operator hide what it did).

Off means: no entry is written, no receipt returned, and the ledger's endpoints answer 404 as a
consortium without a ledger would (agents then need ``--without-ledger``).

Usage: python bench/ledger_off.py ARGS...   (the arguments of ``fedfraud``)
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flask import has_request_context, request  # noqa: E402

# Patched before any module that binds ``record`` by name is imported.
from consortium import ledger  # noqa: E402
from consortium.errors import NotFound  # noqa: E402


def _no_entry(session: Any, event_name: str, **fields: Any) -> Any:
    return SimpleNamespace(seq=-1)


def _no_ledger(*args: Any, **kwargs: Any) -> Any:
    raise NotFound("this consortium keeps no contribution ledger (benchmark without the ledger)")


_view = ledger.ledger


def _view_outside_ledger_endpoints(app: Any = None) -> Any:
    if has_request_context() and request.path.startswith("/v1/ledger"):
        _no_ledger()
    return _view(app)


ledger.record = _no_entry  # type: ignore[assignment]
ledger.receipt = lambda session, seq: None  # type: ignore[assignment,return-value]
ledger.receipt_header = lambda receipt: ""  # type: ignore[assignment]
ledger.latest_checkpoint = _no_ledger  # type: ignore[assignment]
ledger.ledger = _view_outside_ledger_endpoints  # type: ignore[assignment]

from fedfraud.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.argv[0] = "fedfraud"
    main()
