"""Fuzz suite: hostile input at every public entry point (issue 15).

Property, for each entry point: the call either succeeds and what it stored reads back
equal, or raises a :class:`pqlsdk.PqlError` and every table of the database is unchanged;
and a later ordinary call for the same subject still works. Any other exception is a bug.

CI runs the ``pqlsdk-fuzz-ci`` profile (200 examples per test, scaled per test: about
2,700 in all, about 22 s of CPU). The long campaign::

    python -m tests.fuzz --examples 100000          # examples per entry point

selects the ``pqlsdk-fuzz-campaign`` profile through ``PQLSDK_FUZZ_PROFILE`` and
``PQLSDK_FUZZ_EXAMPLES``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
           HealthCheck.function_scoped_fixture, HealthCheck.large_base_example]

settings.register_profile("pqlsdk-fuzz-ci", max_examples=200, deadline=None,
                          suppress_health_check=_HEALTH, print_blob=True)


def fuzz(scale: float = 1.0) -> settings:
    """The settings of one fuzz test: the profile ``PQLSDK_FUZZ_PROFILE`` names (read when
    the test module is imported; ``pqlsdk-fuzz-ci`` by default), with ``scale`` times its
    examples in CI (a slow entry point runs fewer there). The campaign's profile,
    ``pqlsdk-fuzz-campaign``, runs ``PQLSDK_FUZZ_EXAMPLES`` examples per entry point."""
    name = os.environ.get("PQLSDK_FUZZ_PROFILE", "pqlsdk-fuzz-ci")
    if name == "pqlsdk-fuzz-campaign":
        settings.register_profile(
            name, max_examples=int(os.environ.get("PQLSDK_FUZZ_EXAMPLES", "100000")),
            deadline=None, suppress_health_check=_HEALTH, print_blob=True, database=None)
        return settings(settings.get_profile(name))
    profile = settings.get_profile(name)
    return settings(profile, max_examples=max(10, int(profile.max_examples * scale)))
