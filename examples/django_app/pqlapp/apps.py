"""The Client is made once, in ``AppConfig.ready``, from ``settings.PQLSDK``."""

from __future__ import annotations

from django.apps import AppConfig
from django.conf import settings
from django.utils.module_loading import import_string

import pqlsdk


class PqlConfig(AppConfig):
    """Holds the process's :class:`pqlsdk.Client` as ``PqlConfig.client``."""

    name = "pqlapp"
    client: pqlsdk.Client | None = None

    def ready(self) -> None:
        conf = settings.PQLSDK
        segment = None
        if conf.get("SEGMENT_WRITE_KEY"):
            from segment.analytics import Client as SegmentClient

            segment = SegmentClient(write_key=conf["SEGMENT_WRITE_KEY"],
                                    host=conf.get("SEGMENT_HOST"), sync_mode=True)
        PqlConfig.client = pqlsdk.Client(
            conf["DATABASE"], conf["RULES"], segment=segment,
            on_qualified=[import_string(name) for name in conf.get("ON_QUALIFIED", [])])


def pql() -> pqlsdk.Client:
    """The Client ``ready()`` made."""
    assert PqlConfig.client is not None, "pqlapp is not in INSTALLED_APPS"
    return PqlConfig.client
