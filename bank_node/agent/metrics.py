"""The bank agent's Prometheus metrics (``fedfraud bank agent --metrics-port PORT``, on 127.0.0.1).

The agent makes only outbound calls; its metrics are served on the bank's own loopback for the
bank's Prometheus, never to the consortium:

- ``fedfraud_agent_polls_total{outcome}``: looks at the consortium, answered or not;
- ``fedfraud_agent_last_poll_timestamp_seconds``: when the consortium last answered;
- ``fedfraud_agent_runs_total{outcome}``: runs this bank took part in, by outcome (proposed,
  failed: withdrawn with a reason, retry: to be resumed);
- ``fedfraud_agent_contributions_total``, ``fedfraud_agent_uploaded_bytes_total``: what it sent;
- ``fedfraud_agent_current_model_version{family}``: the version the consortium serves, as followed;
- ``fedfraud_agent_privacy_spent_epsilon``: the period's spend, with a budget (read at scrape time).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.core import GaugeMetricFamily

__all__ = ["AgentMetrics"]


class AgentMetrics:
    """One agent's metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.polls = Counter("fedfraud_agent_polls", "Looks at the consortium, by outcome", ["outcome"],
                             registry=self.registry)
        self.last_poll = Gauge("fedfraud_agent_last_poll_timestamp_seconds", "When the consortium last answered",
                               registry=self.registry)
        self.runs = Counter("fedfraud_agent_runs", "Runs taken part in, by outcome", ["outcome"],
                            registry=self.registry)
        self.contributions = Counter("fedfraud_agent_contributions", "Contributions sent and stored",
                                     registry=self.registry)
        self.uploaded = Counter("fedfraud_agent_uploaded_bytes", "Bytes of the contributions sent",
                                registry=self.registry)
        self.model_version = Gauge("fedfraud_agent_current_model_version",
                                   "The version the consortium serves, per family", ["family"],
                                   registry=self.registry)
        self._spent: Callable[[], float] | None = None
        self.registry.register(_Spent(self))

    def polled(self, answered: bool) -> None:
        self.polls.labels(outcome="answered" if answered else "unreachable").inc()
        if answered:
            self.last_poll.set(time.time())

    def contributed(self, payload: bytes) -> None:
        self.contributions.inc()
        self.uploaded.inc(len(payload))

    def follow(self, current: dict[str, Any]) -> None:
        for family, model in current.items():
            if str(model.get("version", "")).isdigit():
                self.model_version.labels(family=family).set(int(model["version"]))

    def spend_from(self, spent: Callable[[], float]) -> None:
        """Report the privacy spend that ``spent`` reads (the bank's budget file)."""
        self._spent = spent

    def serve(self, port: int, host: str = "127.0.0.1") -> Any:
        """Serve ``/metrics`` on ``host:port`` from a background thread."""
        return start_http_server(port, addr=host, registry=self.registry)


class _Spent:
    def __init__(self, metrics: AgentMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[GaugeMetricFamily]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        spent = self._metrics._spent
        if spent is not None:
            yield GaugeMetricFamily("fedfraud_agent_privacy_spent_epsilon",
                                    "Epsilon spent over the budget's period", value=spent())
