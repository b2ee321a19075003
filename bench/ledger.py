"""What the contribution ledger costs: appends, a process's first look at a long log, the full
verification behind the review pages' banner, and the export.

Each figure is a ratio or a rate taken in one run (this machine is shared and noisy):

- append: a state change's transaction with its ledger entry against the same transaction
  without it (a bank's name updated), so the ratio is the ledger's cost on every change;
- first sync: a new process's first append on a log of N entries (it reads and checks every row);
- verification: the whole log checked from the first entry (every signature), entries/s, and the
  review page's load time, which runs it;
- export: the JSON Lines export (each line a receipt), entries/s.

Usage: python bench/ledger.py [--entries 20000] [--database-url URL] [--json OUT]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import track
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _outputs import write_outputs  # noqa: E402

from consortium import ledger  # noqa: E402
from consortium.app import create_app  # noqa: E402
from consortium.auth import issue_token  # noqa: E402
from consortium.storage.database import Database, db  # noqa: E402
from consortium.storage.models import Bank  # noqa: E402


def _appends(app: Any, n: int, *, with_entry: bool) -> float:
    """Seconds for ``n`` transactions that rename a bank, each with or without its entry."""
    with app.app_context():
        bank = db.session.get(Bank, "bank-1")
        started = time.perf_counter()
        for i in track(range(n), description=f"{'with' if with_entry else 'without'} entries", transient=True):
            bank.name = f"Bank {i}"
            if with_entry:
                ledger.record(db.session, "bank.enrolled", bank_id="bank-1", details={"name": bank.name})
            db.session.commit()
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=20_000, help="log size for sync, verification and export")
    parser.add_argument("--appends", type=int, default=2_000, help="transactions timed each way")
    parser.add_argument("--database-url", default=None, help="default: a SQLite file in a temporary folder")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    console = Console()
    folder = Path(tempfile.mkdtemp(prefix="fedfraud-bench-ledger-"))
    config = {"DATABASE_URL": args.database_url or f"sqlite:///{folder / 'consortium.db'}",
              "BLOB_DIR": str(folder / "blobs")}
    app = create_app(config)
    with app.app_context():
        db.session.add(Bank(bank_id="bank-1", name="Bank 1"))
        compliance = issue_token(db.session, "compliance")
        db.session.commit()

    # Interleaved halves, so that drift of the machine weighs on both sides alike.
    half = args.appends // 2
    without = _appends(app, half, with_entry=False) + _appends(app, half, with_entry=False)
    with_entry = _appends(app, half, with_entry=True) + _appends(app, half, with_entry=True)
    grow = max(0, args.entries - 2 * half - 3)
    _appends(app, grow, with_entry=True)

    fresh = create_app(config)  # a new process's view of the log: empty
    with fresh.app_context():
        started = time.perf_counter()
        bank = db.session.get(Bank, "bank-1")
        bank.name = "synced"
        ledger.record(db.session, "bank.enrolled", bank_id="bank-1", details={"name": "synced"})
        db.session.commit()
        first_sync = time.perf_counter() - started
        size = ledger.latest_checkpoint(db.session).size
        started = time.perf_counter()
        verification = ledger.verify_database(db.session)
        verify_s = time.perf_counter() - started
        assert verification.ok, verification
        started = time.perf_counter()
        exported = sum(len(chunk) for chunk in ledger.export_jsonl(db.session))
        export_s = time.perf_counter() - started

    client = fresh.test_client()
    page = client.get("/compliance/sign-in").get_data(as_text=True)
    token = page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    client.post("/compliance/sign-in", data={"token": compliance, "csrf_token": token})
    started = time.perf_counter()
    response = client.get("/compliance/ledger")
    page_s = time.perf_counter() - started
    assert response.status_code == 200 and b"verified up to entry" in response.data
    Database.engine_for(app).dispose()
    Database.engine_for(fresh).dispose()

    results = {
        "database": "postgresql" if args.database_url else "sqlite",
        "appends": 2 * half,
        "append_ms_without_entry": 1000 * without / (2 * half),
        "append_ms_with_entry": 1000 * with_entry / (2 * half),
        "append_ratio": with_entry / without,
        "log_entries": size,
        "first_sync_s": first_sync,
        "verify_entries_per_s": size / verify_s,
        "review_page_s": page_s,
        "export_entries_per_s": size / export_s,
        "export_bytes_per_entry": exported / size,
    }
    table = Table(title=f"contribution ledger ({results['database']}, {size:,} entries)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("state change without / with its entry", f"{results['append_ms_without_entry']:.2f} / "
                  f"{results['append_ms_with_entry']:.2f} ms (x{results['append_ratio']:.2f})")
    table.add_row("a new process's first append (reads and checks the log)", f"{first_sync:.2f} s")
    table.add_row("full verification (every signature)", f"{results['verify_entries_per_s']:,.0f} entries/s")
    table.add_row("review page load (runs the verification)", f"{page_s:.2f} s")
    table.add_row("JSON Lines export", f"{results['export_entries_per_s']:,.0f} entries/s, "
                  f"{results['export_bytes_per_entry']:.0f} B/entry")
    console.print(table)
    write_outputs(results, args.json)


if __name__ == "__main__":
    main()
