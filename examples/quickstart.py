"""Quickstart: record a week of usage and watch a user and a workspace become PQLs.

    python examples/quickstart.py

Uses a fresh SQLite file in a temporary folder, so every run starts from nothing.
"""

from __future__ import annotations

import os
import tempfile
from datetime import datetime, timedelta, timezone

import pqlsdk

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    folder = tempfile.mkdtemp(prefix="pqlsdk-quickstart-")
    database = os.path.join(folder, "pql.db")
    client = pqlsdk.Client(database, rules=os.path.join(HERE, "pql_rules.toml"),
                           sync_mode=True)

    @client.on_qualified
    def tell_sales(q: pqlsdk.Qualification) -> None:
        print(f"QUALIFIED  {q.subject_type} {q.subject_id} -> {q.stage} by rule {q.rule} "
              f"at {q.qualified_at:%Y-%m-%d %H:%M} (id {q.id})")

    start = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)
    client.identify("ada", {"plan": "trial", "email": "ada@acme.io"}, timestamp=start)
    client.group("ada", "acme", {"seats": 12, "name": "Acme"}, timestamp=start)
    client.identify("bob", {"plan": "trial"}, account_id="acme", timestamp=start)

    for day in range(5):
        at = start + timedelta(days=day)
        client.track("ada", "report_generated", {"report": "pipeline"}, timestamp=at)
        client.track("bob", "report_generated", {"report": "churn"}, timestamp=at)
    for n, invitee in enumerate(["cy@acme.io", "di@acme.io", "cy@acme.io"]):
        client.track("ada", "teammate_invited", {"invitee_email": invitee},
                     timestamp=start + timedelta(days=5, minutes=n))

    print("\n--- before connecting a CRM ---")
    print(client.explain("ada", as_of=start + timedelta(days=5, minutes=5)))
    client.track("ada", "teammate_invited", {"invitee_email": "ed@acme.io"},
                 timestamp=start + timedelta(days=5, hours=1))
    client.track("ada", "integration_connected", {"provider": "salesforce"},
                 timestamp=start + timedelta(days=6))

    print("\n--- after ---")
    print(client.explain("ada", as_of=start + timedelta(days=6)))
    print(f"\n{len(client.qualifications())} qualifications stored in {database}")
    client.close()


if __name__ == "__main__":
    main()
