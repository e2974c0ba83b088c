"""``python manage.py pql_evaluate``: re-check every subject (for cron or Celery beat)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from pqlapp.apps import pql


class Command(BaseCommand):
    help = "Re-check every subject against the PQL rules and deliver what qualified."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--as-of", help="ISO-8601 time to evaluate as of (default now)")

    def handle(self, *args: Any, **options: Any) -> None:
        client = pql()
        found = client.evaluate(as_of=options["as_of"])
        delivered = client.flush(timeout=30)
        client.close()
        self.stdout.write(f"{len(found)} new qualification(s)"
                          + ("" if delivered else "; some deliveries are pending"))
