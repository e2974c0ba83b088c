"""Prometheus metrics with the figures of :meth:`pqlsdk.Client.health` (``pip install
'pqlsdk[prometheus]'``)::

    from prometheus_client import REGISTRY
    from pqlsdk.prometheus import PqlCollector

    REGISTRY.register(PqlCollector(client))

Each scrape reads ``client.health()`` once (cheap: the outbox and two ``stat`` calls).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["PqlCollector"]


class PqlCollector(Collector):
    """A collector exposing per destination ``pqlsdk_outbox_pending``,
    ``pqlsdk_outbox_failed`` and ``pqlsdk_outbox_oldest_pending_seconds``, and
    ``pqlsdk_schema_version``, ``pqlsdk_file_bytes`` and ``pqlsdk_sending``. Takes a
    :class:`~pqlsdk.Client` (or an :class:`~pqlsdk.AsyncClient`, read through its Client)."""

    def __init__(self, client: Any) -> None:
        self.client = getattr(client, "client", client)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """The metrics, read now."""
        health = self.client.health()
        pending = GaugeMetricFamily("pqlsdk_outbox_pending",
                                    "Outbox rows waiting or retrying", labels=["destination"])
        failed = GaugeMetricFamily("pqlsdk_outbox_failed",
                                   "Outbox rows given up on", labels=["destination"])
        oldest = GaugeMetricFamily("pqlsdk_outbox_oldest_pending_seconds",
                                   "Age of the oldest pending outbox row",
                                   labels=["destination"])
        for found in health.destinations:
            pending.add_metric([found.destination], found.pending)
            failed.add_metric([found.destination], found.failed)
            oldest.add_metric([found.destination], found.oldest_pending_age or 0.0)
        yield pending
        yield failed
        yield oldest
        yield GaugeMetricFamily("pqlsdk_schema_version", "The database's schema version",
                                value=health.schema_version)
        if health.file_bytes is not None:
            yield GaugeMetricFamily("pqlsdk_file_bytes", "The SQLite file with its WAL",
                                    value=health.file_bytes)
        yield GaugeMetricFamily("pqlsdk_sending", "1 unless Client(send=False)",
                                value=1 if health.sending else 0)
