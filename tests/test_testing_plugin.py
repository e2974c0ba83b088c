"""pqlsdk.testing, used as an application's test suite uses it: through pytest's entry point."""

from __future__ import annotations

import pathlib

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

import pqlsdk

pytest_plugins = ["pytester"]

RULES = """
[[rules]]
name = "team_builder"
stage = "pql"
  [[rules.all]]
  event = "teammate_invited"
  distinct = "invitee_email"
  at_least = 2
"""


def test_pql_client_records_segment_messages_and_qualifications(pytester):
    pytester.makefile(".toml", pql_rules=RULES)
    pytester.makeini("[pytest]\npqlsdk_rules = pql_rules.toml\n")
    pytester.makepyfile(
        """
        from pqlsdk.testing import assert_not_qualified, assert_qualified

        def invite(client, user, email):
            client.track(user, "teammate_invited", {"invitee_email": email})

        def test_two_invites_qualify(pql_client):
            invite(pql_client, "u1", "a@x.io")
            assert_not_qualified(pql_client, "u1", "team_builder")
            invite(pql_client, "u1", "b@x.io")
            q = assert_qualified(pql_client, "u1", "team_builder")
            assert pql_client.qualified == [q]
            track, identify = pql_client.segment_messages
            assert track["event"] == "Lead Qualified"
            assert track["messageId"] == q.id
            assert identify["traits"] == {"lifecycle_stage": "pql"}
            assert pql_client.store.path is None  # in memory
            assert pql_client.sync_mode

        def test_each_test_gets_a_fresh_client(pql_client):
            assert pql_client.qualifications() == []
            assert pql_client.segment_messages == []
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_assert_qualified_failure_says_how_far_the_user_got(pytester):
    pytester.makepyfile(
        """
        import pytest
        import pqlsdk
        from pqlsdk.testing import assert_qualified

        @pytest.fixture
        def pql_rules():
            return [pqlsdk.Rule("team_builder",
                                pqlsdk.event("teammate_invited", at_least=3), stage="pql")]

        def test_one_invite_is_not_enough(pql_client):
            pql_client.track("u1", "teammate_invited")
            assert_qualified(pql_client, "u1", "team_builder")

        def test_an_unknown_user(pql_client):
            assert_qualified(pql_client, "nobody", "team_builder")
        """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines([
        "*user 'u1' is not qualified for rule 'team_builder'; it met no rule.",
        "*user u1: stage lead",
        "*team_builder: not yet",
        "*teammate_invited*1 of at least 3*",
    ])
    result.stdout.fnmatch_lines(["*user 'nobody' was never seen*"])


def test_the_plugin_is_registered_by_the_package_metadata():
    pyproject = tomllib.loads(
        (pathlib.Path(__file__).parent.parent / "pyproject.toml").read_text())
    assert pyproject["project"]["entry-points"]["pytest11"] == {"pqlsdk": "pqlsdk.testing"}
    assert pyproject["tool"]["setuptools"]["package-data"]["pqlsdk"] == ["py.typed"]
    assert pqlsdk.__version__ == pyproject["project"]["version"]
    assert (pathlib.Path(pqlsdk.__file__).parent / "py.typed").exists()


def test_assert_qualified_accepts_an_account_and_an_async_client(tmp_path):
    import asyncio

    from pqlsdk.testing import assert_qualified

    rules = [pqlsdk.Rule("busy", pqlsdk.event("report_generated", at_least=1),
                         subject="account", stage="pql")]

    async def main():
        async with pqlsdk.AsyncClient(str(tmp_path / "a.db"), rules, sync_mode=True) as c:
            await c.track("u1", "report_generated", account_id="acme")
            q = assert_qualified(c, rule="busy", account_id="acme")
            assert q.subject_type == "account"

    asyncio.run(main())
