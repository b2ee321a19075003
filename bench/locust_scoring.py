"""locust users for bench/scoring.py: risk systems posting transactions to a node's scoring service.

Driven by the environment (bench/scoring.py sets it):
- ``SCORING_TOKEN``: a scorer token;
- ``SCORING_ROWS``: a JSON file of transactions (a list of objects), sent in their order, each once;
- ``SCORING_BATCH``: transactions a request (1: the single-transaction form);
- ``SCORING_RATE``: requests a second per user, sent at the times of a Poisson process (the
  users together make one Poisson stream, as independent card holders do); 0: as fast as
  answers come back;
- ``SCORING_PATH``: unset, or ``/v1/health`` to measure the floor instead: the same service, load
  generator and rate, each request a ``GET`` of the health endpoint (no scoring; one per row);
- ``SCORING_LATENCIES``: where to write, at the end, every successful request's time in ms (as
  measured by locust, unrounded), the counts of successes and failures, and the seconds from the
  first request sent to the last answer.

Every answer is checked: status 200 and one result per transaction sent. When the transactions
run out, the run stops.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterator
from typing import Any

import orjson
from locust import FastHttpUser, constant, events, task

_ROWS: list[dict[str, Any]] = json.loads(open(os.environ["SCORING_ROWS"], encoding="utf-8").read())
_BATCH = int(os.environ.get("SCORING_BATCH", "1"))
_RATE = float(os.environ.get("SCORING_RATE", "0"))
_FLOOR = os.environ.get("SCORING_PATH") == "/v1/health"
_HEADERS = {"Authorization": f"Bearer {os.environ['SCORING_TOKEN']}", "Content-Type": "application/json"}


def _bodies() -> Iterator[bytes]:
    # Encoded as they are sent (orjson: the load generator shares the service's two cores, and
    # the standard library's encoder took 15 ms of its time a 1,000-transaction request).
    for start in range(0, len(_ROWS) - _BATCH + 1, _BATCH):
        yield orjson.dumps(_ROWS[start] if _BATCH == 1 else {"transactions": _ROWS[start : start + _BATCH]})


_NEXT = _bodies()  # shared by every user (locust users are greenlets of one process)


class RiskSystem(FastHttpUser):
    def on_start(self) -> None:
        self._next_start = time.monotonic()

    def wait_time(self) -> float:
        if _RATE <= 0:
            return constant(0)(self)
        # Each start an exponential gap after the previous start (not after the answer).
        self._next_start += random.expovariate(_RATE)
        return max(0.0, self._next_start - time.monotonic())

    @task
    def score(self) -> None:
        body = next(_NEXT, None)
        if body is None:
            self.environment.runner.quit()
            return
        if _FLOOR:
            with self.client.get("/v1/health", name="/v1/health", catch_response=True) as answer:
                if answer.status_code != 200:
                    answer.failure(f"{answer.status_code}: {answer.text[:200]}")
            return
        name = "/v1/score" if _BATCH == 1 else f"/v1/score [{_BATCH}]"
        with self.client.post("/v1/score", data=body, headers=_HEADERS, name=name, catch_response=True) as answer:
            if answer.status_code != 200:
                answer.failure(f"{answer.status_code}: {answer.text[:200]}")
            elif _BATCH > 1 and len(orjson.loads(answer.content)["results"]) != _BATCH:
                answer.failure("not one result per transaction")


_TIMES: list[float] = []
_COUNTS = {"ok": 0, "failures": 0, "first": 0.0, "last": 0.0}


@events.request.add_listener
def _record(response_time: float, exception: BaseException | None, **_: Any) -> None:
    now = time.perf_counter()
    if not _COUNTS["first"]:
        _COUNTS["first"] = now - response_time / 1000
    _COUNTS["last"] = now
    if exception is None:
        _TIMES.append(response_time)
        _COUNTS["ok"] += 1
    else:
        _COUNTS["failures"] += 1


@events.quitting.add_listener
def _write(**_: Any) -> None:
    with open(os.environ["SCORING_LATENCIES"], "w", encoding="utf-8") as out:
        json.dump({"ms": _TIMES, "ok": _COUNTS["ok"], "failures": _COUNTS["failures"],
                   "seconds": _COUNTS["last"] - _COUNTS["first"]}, out)
