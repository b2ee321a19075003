"""The demo's last act: one bank's risk team scores held-out transactions through its node's API.

After the federated training, bank-1's node gets what its agent would keep (its own cards'
transactions in its store, the consortium's model as published), a ``fedfraud bank serve``
process starts on 127.0.0.1, and the first transactions of the test period are scored through
``POST /v1/score``, one at a time as authorisations arrive.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path
from typing import Any

import click
import pandas as pd
import requests

from bank_node.agent.state import StateDir
from bank_node.agent.training import canonical_json
from bank_node.features import MODEL_INPUTS
from bank_node.federated.xgb_export import to_xgboost_json
from bank_node.service.auth import issue_token
from bank_node.store import TransactionStore
from fedfraud.localnet import FEDFRAUD, ProcessExitedError, free_port, wait_until_serving
from fedfraud.simulation import SimulationConfig, partition_customers

__all__ = ["score_through_the_api"]


def score_through_the_api(frame: pd.DataFrame, model: Any, config: SimulationConfig, out_dir: Path,
                          *, n_transactions: int = 6) -> list[dict[str, Any]]:
    """Set up bank-1's node, start its scoring service, score its first test transactions."""
    owner = partition_customers(frame["customer_id"], config.shares, seed=config.seed)
    own = frame[owner == 0].sort_values(["timestamp", "transaction_id"])
    test_start = config.windows.test_start
    root = out_dir / "bank-1-node"
    shutil.rmtree(root, ignore_errors=True)
    state = StateDir(root)
    state.ensure()
    store = TransactionStore.in_state_dir(root)
    store.ingest(own[own["timestamp"] < test_start], name="history", sha256="demo".ljust(64, "0"), retention_days=None)
    token = issue_token(store.engine, "scorer")
    store.close()
    body = canonical_json(to_xgboost_json(model, params=config.gbdt_params, feature_names=MODEL_INPUTS))
    path = state.save_model("1", "xgboost", body)
    state.update_run("demo-run", {"status": "published", "model": "xgboost", "version": "1", "model_file": str(path),
                                  "promoted": True, "matches_proposal": True,
                                  "digest": hashlib.sha256(body).hexdigest()})

    port = free_port()
    log = open(out_dir / "scoring-service.log", "wb")  # noqa: SIM115 - closed below
    service = subprocess.Popen([*FEDFRAUD, "bank", "serve", "--state-dir", str(root), "--port", str(port)],
                               stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_until_serving(f"{url}/v1/ready", service, out_dir / "scoring-service.log", 60, "the scoring service")
        except ProcessExitedError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"\nbank-1's scoring service on {url}: its risk team scores held-out transactions")
        answers = []
        held_out = own[own["timestamp"] >= test_start]
        # The first transactions of the test period, and its first frauds (the service never sees labels).
        chosen = pd.concat([held_out.head(n_transactions - 2), held_out[held_out["label"] == 1].head(2)])
        for tx in chosen.drop_duplicates("transaction_id").sort_values(["timestamp", "transaction_id"]).itertuples():
            response = requests.post(f"{url}/v1/score", headers={"Authorization": f"Bearer {token}"}, timeout=10, json={
                "transaction_id": int(tx.transaction_id), "timestamp": tx.timestamp.isoformat(),
                "customer_id": int(tx.customer_id), "terminal_id": int(tx.terminal_id), "amount": float(tx.amount)})
            if response.status_code != 200:
                raise click.ClickException(f"scoring failed: {response.status_code} {response.text}")
            answer = response.json()
            answers.append(answer)
            reasons = ", ".join(f"{r['feature']}={r['value']:g} ({r['contribution']:+.2f})" for r in answer["reasons"][:2])
            click.echo(f"  transaction {answer['transaction_id']} ({tx.amount:.2f}): p={answer['probability']:.3f} "
                       f"{answer['decision']:<5} model v{answer['model_version']}; {reasons}"
                       f"{'  [fraud]' if tx.label == 1 else ''}")
        return answers
    finally:
        service.terminate()
        service.wait(timeout=30)
        log.close()
