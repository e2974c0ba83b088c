"""pqlsdk.prometheus: the health() figures through a real prometheus_client registry."""

from __future__ import annotations

from datetime import datetime, timezone

from freezegun import freeze_time
from prometheus_client import CollectorRegistry, generate_latest
from segment.analytics import Client as SegmentClient

import pqlsdk
from pqlsdk.prometheus import PqlCollector

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)
RULES = [pqlsdk.Rule("r", pqlsdk.event("report_generated", at_least=1), stage="mql")]


def boom(q):
    raise RuntimeError("no")


def test_the_collector_exposes_the_health_figures(make_client, db_path):
    segment = SegmentClient(write_key="k", host="http://127.0.0.1:9", sync_mode=True)
    with freeze_time(T0) as clock:
        client = make_client(RULES, segment=segment, send=False, sync_mode=True,
                             on_qualified=boom, max_retries=1)
        client.track("ada", "report_generated")
        clock.tick(42)
        registry = CollectorRegistry()
        registry.register(PqlCollector(client))
        text = generate_latest(registry).decode()
    assert 'pqlsdk_outbox_pending{destination="segment"} 1.0' in text
    assert 'pqlsdk_outbox_oldest_pending_seconds{destination="segment"} 42.0' in text
    assert 'pqlsdk_outbox_failed{destination="callback:tests.test_prometheus.boom"} 1.0' in text
    assert f"pqlsdk_schema_version {float(client.health().schema_version)}" in text
    assert "pqlsdk_file_bytes " in text
    assert "pqlsdk_sending 0.0" in text
    value = registry.get_sample_value("pqlsdk_file_bytes")
    assert value == client.health().file_bytes
