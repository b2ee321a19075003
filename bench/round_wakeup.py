"""How late a bank waiting on a round in one worker learns of a release made by another worker, on
PostgreSQL: with the round notifications (``consortium/notify.py``) against the periodic read alone
(every ``LONG_POLL_INTERVAL_S``, 50 ms), in one run, rounds alternated.

Two apps on one database stand for two gunicorn workers. Per round, two of three banks contribute
through worker A; bank-1 waits there for the sum (``?wait=30``); bank-3's contribution, through
worker B, releases the round (in that request). The figure is the time from the release (the
round's ``closed_at``, set just before its commit) to bank-1's answer. A bank
waits twice a round in a run (for the sum, then for the notes), so a nightly run of several hundred
rounds pays this twice per round whenever its banks' requests land on different workers.

Needs PostgreSQL: ``FEDFRAUD_BENCH_DATABASE_URL`` (default: the test database of ``.ci/run``).

Usage: python bench/round_wakeup.py [--rounds 40] [--json OUT] [--png OUT]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _outputs import write_outputs  # noqa: E402

err = Console(stderr=True)
DEFAULT_URL = "postgresql://fedfraud:fedfraud@127.0.0.1:5432/fedfraud_test"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(figsize=(7, 4))
    ways = list(result["ways"])
    axes.boxplot([result["ways"][way]["latencies_ms"] for way in ways], tick_labels=ways)
    axes.set_ylabel("release (worker B) to the answer (worker A), ms")
    axes.set_title(f"{result['rounds']} rounds per way, PostgreSQL", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--png", type=Path, default=None)
    args = parser.parse_args()

    import dataclasses

    import crypto
    from consortium.app import create_app
    from consortium.auth import issue_token
    from consortium.extensions import close_resources
    from consortium.notify import RoundNotifier
    from sqlalchemy import select

    from consortium.storage.database import Database, db
    from consortium.storage.models import RoundRow
    from tests.consortium.conftest import pg_schema, set_up_consortium

    base = os.environ.get("FEDFRAUD_BENCH_DATABASE_URL", DEFAULT_URL)
    he_key = crypto.generate("ckks", scale_bits=30)
    publish = RoundNotifier.publish
    ways: dict[str, dict[str, Any]] = {"notifications": {"latencies_ms": []}, "periodic read only": {"latencies_ms": []}}
    with tempfile.TemporaryDirectory(prefix="fedfraud-wakeup-") as root, pg_schema(base, f"w{uuid.uuid4().hex[:8]}") as url:
        config = {"DATABASE_URL": url, "BLOB_DIR": str(Path(root) / "blobs"), "TESTING": True}
        worker_a, worker_b = create_app(config), create_app(config)
        with worker_a.app_context():
            operator = issue_token(db.session, "operator")
            db.session.commit()
        consortium = set_up_consortium(worker_a.test_client(), operator, he_key, n_banks=3)
        run_id = consortium.open_run()["run_id"]
        payloads = [he_key.encrypt(np.full(5, float(i + 1))) for i in range(3)]
        try:
            for index in range(2 * args.rounds):
                way = "notifications" if index % 2 == 0 else "periodic read only"
                RoundNotifier.publish = publish if way == "notifications" else (lambda self: None)  # type: ignore[method-assign]
                key = f"r{index}"
                for bank_id, payload in zip(("bank-1", "bank-2"), payloads, strict=False):
                    consortium.bank(bank_id).contribute(run_id, key, payload)
                answered: dict[str, float] = {}

                def wait(key: str = key) -> None:
                    response = consortium.client.get(f"/v1/runs/{run_id}/aggregates/{key}?wait=30",
                                                     headers=consortium.bank("bank-1").auth)
                    assert response.status_code == 200, response.get_json()
                    answered["at"] = time.time()

                waiter = threading.Thread(target=wait)
                waiter.start()
                time.sleep(0.2)
                last = dataclasses.replace(consortium.bank("bank-3"), client=worker_b.test_client())
                sent = time.perf_counter()
                assert last.contribute(run_id, key, payloads[2]).status_code == 201
                ways[way].setdefault("upload_ms", []).append(1000 * (time.perf_counter() - sent))
                waiter.join(40)
                with worker_a.app_context():
                    closed = db.session.execute(select(RoundRow.closed_at).where(
                        RoundRow.run_id == run_id, RoundRow.round_key == key)).scalar_one()
                released = closed.replace(tzinfo=UTC).timestamp()
                ways[way]["latencies_ms"].append(1000 * (answered["at"] - released))
        finally:
            RoundNotifier.publish = publish  # type: ignore[method-assign]
            for worker in (worker_a, worker_b):
                close_resources(worker)
                Database.engine_for(worker).dispose()
    table = Table(title=f"a release in worker B seen by a bank waiting in worker A ({args.rounds} rounds each)")
    for column in ("way", "p50 ms", "p90 ms", "max ms", "upload p50 ms"):
        table.add_column(column, justify="right")
    for way, row in ways.items():
        values = np.asarray(row["latencies_ms"])
        row.update(p50_ms=float(np.percentile(values, 50)), p90_ms=float(np.percentile(values, 90)),
                   max_ms=float(values.max()), upload_p50_ms=float(np.percentile(row["upload_ms"], 50)))
        table.add_row(way, f"{row['p50_ms']:.1f}", f"{row['p90_ms']:.1f}", f"{row['max_ms']:.1f}",
                      f"{row['upload_p50_ms']:.1f}")
    Console().print(table)
    write_outputs({"rounds": args.rounds, "ways": ways}, args.json, args.png, plot)


if __name__ == "__main__":
    main()
