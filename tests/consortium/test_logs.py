"""The aggregator's logs: one JSON object a line, with ids and sizes, never a token or a payload."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import numpy as np
import pytest

import crypto
from consortium.logs import JsonFormatter


def test_a_whole_round_logs_json_lines_without_secrets(
    consortium: Any, he_key: crypto.HEScheme, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="consortium")
    # Directly on the logger: a command run earlier in this process may have stopped propagation.
    consortium_logger = logging.getLogger("consortium")
    consortium_logger.addHandler(caplog.handler)
    try:
        released = run_a_round(consortium, he_key)
    finally:
        consortium_logger.removeHandler(caplog.handler)
    payloads, released_data, run_id = released

    lines = [JsonFormatter().format(record) for record in caplog.records if record.name.startswith("consortium")]
    entries = [json.loads(line) for line in lines]
    assert any(e.get("run_id") == run_id and e.get("round_key") == "r" and "bank_id" in e for e in entries)
    secrets = [consortium.operator, *(bank.token for bank in consortium.banks.values())]
    for payload in [*payloads, released_data]:
        secrets += [payload[64:96].hex(), base64.b64encode(payload[64:96]).decode()]
    for line in lines:
        for secret in secrets:
            assert secret not in line


def run_a_round(consortium: Any, he_key: crypto.HEScheme) -> tuple[list[bytes], bytes, str]:
    run_id = consortium.open_run()["run_id"]
    payloads = [he_key.encrypt(np.full(20, float(i + 1))) for i in range(3)]
    for bank, payload in zip(consortium.banks.values(), payloads, strict=True):
        assert bank.contribute(run_id, "r", payload).status_code == 201
    released = consortium.bank("bank-1").aggregate(run_id, "r")
    assert released.status_code == 200
    return payloads, released.data, run_id
