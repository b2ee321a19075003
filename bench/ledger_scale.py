"""The ledger at a million entries: filtering a page of entries, and an inclusion proof.

The log is written straight into the database (signed entries, as the service writes them, with
the service's own key), since appending a million state changes through the API would take the
better part of an hour; the service then reads it as it would after years of nightly runs.

Usage: python bench/ledger_scale.py [--entries 1000000] [--json OUT]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _outputs import write_outputs  # noqa: E402

from consortium import ledger  # noqa: E402
from consortium.app import create_app  # noqa: E402
from consortium.auth import issue_token  # noqa: E402
from consortium.storage.database import Database, db  # noqa: E402
from consortium.storage.models import LedgerEntry, LedgerHead  # noqa: E402
from crypto.merkle import Tree, leaf_hash  # noqa: E402
from schemas.ledger import canonical_entry  # noqa: E402

BANKS = [f"bank-{i}" for i in range(1, 21)]


def _fill(app: Any, n: int, console: Console) -> None:
    view = ledger.ledger(app)
    tree = Tree()
    start = datetime(2025, 1, 1)
    rows: list[dict[str, Any]] = []
    engine = Database.engine_for(app)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"writing {n:,} signed entries", total=n)
        for seq in range(n):
            at = start + timedelta(seconds=seq * 30)
            bank = BANKS[seq % len(BANKS)]
            run = f"run-{seq // 2000:05d}"
            event = "contribution.accepted" if seq % 10 else "round.released"
            body = canonical_entry(seq, event, at, bank_id=bank if seq % 10 else None, run_id=run,
                                   details={"round_key": f"gbdt/t{seq % 100}/n64", "payload_sha256": f"{seq:064x}"})
            leaf = leaf_hash(body)
            tree.append(leaf)
            checkpoint = view.sign(seq + 1, tree.root(), at)
            rows.append({"seq": seq, "event": event, "at": at, "bank_id": bank if seq % 10 else None, "run_id": run,
                         "model_version": None, "body": body.decode(), "leaf_hash": leaf.hex(),
                         "root": checkpoint.root.hex(), "timestamp_ms": checkpoint.timestamp_ms,
                         "signature": checkpoint.signature})
            if len(rows) == 20_000 or seq == n - 1:
                with engine.begin() as connection:
                    connection.execute(LedgerEntry.__table__.insert(), rows)
                rows = []
                progress.update(task, completed=seq + 1)
    with engine.begin() as connection:
        connection.execute(LedgerHead.__table__.update().values(size=n))


def _time(client: Any, path: str, token: str, repeat: int) -> tuple[float, Any]:
    timings = []
    response = None
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.get(path, headers={"Authorization": f"Bearer {token}"})
        timings.append(time.perf_counter() - started)
        assert response.status_code == 200, (path, response.get_json())
    return 1000 * statistics.median(timings), response


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    console = Console()
    folder = Path(tempfile.mkdtemp(prefix="fedfraud-bench-ledger-scale-"))
    config = {"DATABASE_URL": f"sqlite:///{folder / 'consortium.db'}", "BLOB_DIR": str(folder / "blobs")}
    app = create_app(config)
    with app.app_context():
        token = issue_token(db.session, "compliance")  # entry 0 and 1 are rewritten below: issue first
        db.session.commit()
    with Database.engine_for(app).begin() as connection:
        connection.execute(LedgerEntry.__table__.delete())
    _fill(app, args.entries, console)
    (folder / "ledger-signing.key.head").unlink(missing_ok=True)  # the witness of the two entries replaced

    service = create_app(config)  # a process that never saw the log
    client = service.test_client()
    results: dict[str, Any] = {"entries": args.entries}
    queries = {
        "one bank, first page": "/v1/ledger/entries?bank_id=bank-7&limit=100",
        "one event": "/v1/ledger/entries?event=round.released&limit=100",
        "one run": f"/v1/ledger/entries?run_id=run-{args.entries // 4000:05d}&limit=100",
        "a day": "/v1/ledger/entries?since=2025-06-01T00:00:00Z&until=2025-06-02T00:00:00Z&limit=100",
        "bank and event, deep page": f"/v1/ledger/entries?bank_id=bank-3&event=contribution.accepted"
                                     f"&after={args.entries // 2}&limit=100",
    }
    for name, path in queries.items():
        results[f"filter ms: {name}"], response = _time(client, path, token, 5)
        assert response.get_json()["entries"], name
    started = time.perf_counter()
    _time(client, "/v1/ledger/proofs/inclusion?index=0", token, 1)
    results["first proof s: the process reads and checks the log"] = time.perf_counter() - started
    proof_ms = []
    for index in range(0, args.entries, max(1, args.entries // 200)):
        ms, _ = _time(client, f"/v1/ledger/proofs/inclusion?index={index}", token, 1)
        proof_ms.append(ms)
    results["inclusion proof ms: median"] = statistics.median(proof_ms)
    results["inclusion proof ms: max"] = max(proof_ms)
    table = Table(title=f"ledger of {args.entries:,} entries (SQLite)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in results.items():
        table.add_row(name, f"{value:,.1f}" if isinstance(value, float) else f"{value:,}")
    console.print(table)
    write_outputs(results, args.json)


if __name__ == "__main__":
    main()
