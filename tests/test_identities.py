"""Issue 20 item 4: identities (alias, anonymous ids), page/screen, Segment parity
(message_id on identify/group/page/alias, context and integrations) (SPEC §11)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

import pqlsdk
from pqlsdk import event
from pqlsdk.importer import import_jsonl

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)
PRICING = pqlsdk.Rule("pricing_visits", event("page", at_least=3, within="7d",
                                              where={"name": "Pricing"}), stage="mql")
ENGAGED = pqlsdk.Rule("engaged", event("report_generated", at_least=2), stage="mql")
TEAM = pqlsdk.Rule("team", event("teammate_invited"), stage="pql")


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


def test_anonymous_pages_count_for_the_user_once_identify_links_them(make_client):
    client = make_client([PRICING])
    assert client.page(None, "Pricing", {"url": "/pricing"}, anonymous_id="anon1",
                       timestamp=day(0)) == []
    client.page(None, "Pricing", anonymous_id="anon1", timestamp=day(1))
    client.page(None, "Docs", anonymous_id="anon1", timestamp=day(1.5))  # not Pricing
    client.identify("ada", {"plan": "trial"}, anonymous_id="anon1", timestamp=day(2))
    assert client.status("anon1").subject_id == "ada"  # not a separate lead: ada's
    [q] = client.page("ada", "Pricing", timestamp=day(3))
    assert (q.subject_id, q.rule, q.evidence.value) == ("ada", "pricing_visits", 3)
    assert client.funnel().stage("lead").entered == 1
    assert client.funnel().stage("mql").entered == 1
    # later activity under the anonymous id counts for ada too
    client.track(None, "report_generated", anonymous_id="anon1", timestamp=day(4))
    assert "ada: stage mql" in client.explain("ada")
    assert client.explain("anon1") == client.explain("ada")


def test_page_and_screen_are_events_with_name_and_category(make_client):
    client = make_client([])
    client.page("ada", "Pricing", {"url": "/pricing"}, category="Marketing",
                timestamp=day(0), message_id="p1")
    client.page("ada", "Pricing", {"url": "/pricing"}, category="Marketing",
                timestamp=day(0), message_id="p1")  # the same message id: once
    client.screen("ada", "Settings", timestamp=day(1))
    with client.store.read() as tx:
        rows = tx.rows("events", "user_id = ?", ["ada"], order_by="ts")
    assert [(r["event"], json.loads(r["properties"])) for r in rows] == [
        ("page", {"url": "/pricing", "name": "Pricing", "category": "Marketing"}),
        ("screen", {"name": "Settings"})]
    with pytest.raises(pqlsdk.ValidationError, match="pass user_id, or anonymous_id"):
        client.page(None, "Pricing")


def test_alias_merges_history_stage_and_keeps_the_earlier_qualification(make_client):
    changes = []
    client = make_client([ENGAGED, TEAM], sync_mode=True)
    client.on_stage_change(changes.append, name="crm")
    client.track("old", "report_generated", timestamp=day(0))
    [earlier] = client.track("old", "report_generated", timestamp=day(1))   # old: mql
    client.track("ada", "teammate_invited", timestamp=day(2))               # ada: pql
    client.track("ada", "report_generated", timestamp=day(3))
    [later] = client.track("ada", "report_generated", timestamp=day(4))
    client.identify("old", {"plan": "trial", "seats": 2}, timestamp=day(4))
    client.identify("ada", {"plan": "pro"}, timestamp=day(4))
    assert client.alias("old", "ada", timestamp=day(5)) == []
    status = client.status("ada")
    assert status.stage == "pql"  # the later of mql and pql
    # engaged: both met it; the earlier (old's, day 1) stays, under ada
    assert sorted((q.rule, q.id, q.qualified_at) for q in status.qualifications) == sorted([
        ("engaged", earlier.id, day(1)), ("team", status.qualifications[0].id
                                          if status.qualifications[0].rule == "team"
                                          else status.qualifications[1].id, day(2))])
    assert later.id not in {q.id for q in client.qualifications()}
    assert {q.subject_id for q in client.qualifications()} == {"ada"}
    # history joined, oldest first: both first_seen entries and both rule moves
    assert [(c.to_stage, c.source) for c in client.history("ada")] == [
        ("lead", "first_seen"), ("mql", "rule:engaged"), ("lead", "first_seen"),
        ("pql", "rule:team")]
    assert client.export("ada")["traits"] == {"plan": "pro", "seats": 2}  # the user's win
    assert client.status("old") == status  # the previous id reads as the user
    client.track("old", "signed_in", timestamp=day(6))   # counts for ada from then on
    assert [e["event"] for e in client.export("ada")["events"]][-1] == "signed_in"
    assert client.alias("old", "ada", timestamp=day(7)) == []  # again: nothing to do
    with pytest.raises(pqlsdk.ValidationError, match="already linked to user 'ada'"):
        client.alias("old", "bob")
    assert [c.to_stage for c in changes] == ["mql", "pql"]  # the merge moved nobody


def test_reads_under_a_linked_id_resolve_to_the_user(make_client):
    """status, explain, score and history under an aliased previous id or a linked
    anonymous id read the user it was linked to, as Segment and PostHog resolve an alias."""
    client = make_client({"rules": [{"name": "engaged", "stage": "mql", "all": [
        {"event": "report_generated", "at_least": 2}]}], "scoring": {"behavior": [
        {"event": "report_generated", "points": 5},
        {"event": "page", "points": 2}]}})
    client.page(None, "Pricing", anonymous_id="anon1", timestamp=day(0))
    client.track("old", "report_generated", timestamp=day(1))
    client.identify("ada", anonymous_id="anon1", timestamp=day(2))
    client.track("ada", "report_generated", timestamp=day(3))   # ada: 2 reports, mql
    client.alias("old", "ada", timestamp=day(4))
    # ada: 1 page (2 points) + 2 reports (5 each) = 12
    for linked in ("anon1", "old", "ada"):
        score = client.score(linked, as_of=day(5))
        assert (score.behavior, score.total) == (12, 12)
        status = client.status(linked, as_of=day(5))
        assert (status.subject_id, status.stage) == ("ada", "mql")
        assert [q.rule for q in status.qualifications] == ["engaged"]
        assert [(c.subject_id, c.to_stage) for c in client.history(linked)] == [
            ("ada", "lead"), ("ada", "lead"), ("ada", "mql")]
        assert client.explain(linked, as_of=day(5)).startswith("user ada: stage mql")
    with pytest.raises(pqlsdk.UnknownSubject, match="'nobody'"):
        client.status("nobody")  # an id never seen nor linked is still unknown


def test_alias_moves_the_user_to_the_later_stage_and_rechecks_its_rules(make_client):
    changes = []
    rule = pqlsdk.Rule("busy", event("report_generated", at_least=3), stage="mql")
    client = make_client([rule], sync_mode=True)
    client.on_stage_change(changes.append, name="crm")
    client.track("old", "report_generated", timestamp=day(0))
    client.track("old", "report_generated", timestamp=day(1))
    client.set_stage("old", stage="sql", reason="demo", timestamp=day(1.5))
    client.track("ada", "report_generated", timestamp=day(2))
    [q] = client.alias("old", "ada", timestamp=day(3))  # 2 + 1 reports together: 3
    assert (q.subject_id, q.qualified_at, q.evidence.value) == ("ada", day(3), 3)
    assert client.status("ada").stage == "sql"
    [moved] = [c for c in changes if c.source == "alias"]
    assert (moved.subject_id, moved.from_stage, moved.to_stage, moved.reason) == (
        "ada", "lead", "sql", "alias of old")


def test_alias_of_an_unknown_user_hands_the_subject_over(make_client):
    client = make_client([ENGAGED])
    client.track("anon9", "report_generated", timestamp=day(0))
    client.alias("anon9", "zoe", timestamp=day(1))
    [q] = client.track("zoe", "report_generated", timestamp=day(2))
    assert q.subject_id == "zoe"
    assert [c.source for c in client.history("zoe")] == ["first_seen", "rule:engaged"]


def test_message_id_makes_identify_group_and_alias_idempotent(make_client):
    client = make_client([])
    client.identify("ada", {"plan": "trial"}, message_id="m1", timestamp=day(0))
    client.identify("ada", {"plan": "pro"}, message_id="m1", timestamp=day(1))
    client.group("ada", "acme", {"seats": 3}, message_id="m2", timestamp=day(0))
    client.group("ada", "acme", {"seats": 9}, message_id="m2", timestamp=day(1))
    assert client.export("ada")["traits"] == {"plan": "trial"}
    with client.store.read() as tx:
        [acme] = tx.rows("accounts", "account_id = ?", ["acme"])
    assert json.loads(acme["traits"]) == {"seats": 3}


def test_context_and_integrations_are_kept_and_forwarded_as_given(
        make_client, segment_server, segment_client):
    client = make_client([], segment=segment_client, forward_events=True, sync_mode=True)
    client.track("ada", "signed_in", {"x": 1}, context={"ip": "10.0.0.1", "locale": "fr"},
                 integrations={"All": False, "Mixpanel": True}, timestamp=day(0),
                 message_id="t1")
    client.page(None, "Pricing", anonymous_id="anon1", timestamp=day(1), message_id="p1")
    client.alias("anon1", "ada", timestamp=day(2), message_id="a1")
    with client.store.read() as tx:
        [row] = tx.rows("events", "message_id = ?", ["t1"])
    assert json.loads(row["context"]) == {"ip": "10.0.0.1", "locale": "fr"}
    assert json.loads(row["integrations"]) == {"All": False, "Mixpanel": True}
    track, page, alias = segment_server.messages
    assert (track["context"]["ip"], track["integrations"]) == (
        "10.0.0.1", {"All": False, "Mixpanel": True})
    assert track["context"]["library"]["name"] == "analytics-python"
    assert (page["anonymousId"], page["event"], page["properties"]) == (
        "anon1", "page", {"name": "Pricing"})
    assert (alias["type"], alias["previousId"], alias["userId"], alias["messageId"]) == (
        "alias", "anon1", "ada", "a1")


def test_identify_group_and_alias_keep_context_and_integrations_and_forward_them(
        make_client, segment_server, segment_client):
    client = make_client([], segment=segment_client, forward_events=True, sync_mode=True)
    client.identify("ada", {"plan": "pro"}, context={"ip": "10.0.0.2"},
                    integrations={"Salesforce": False}, timestamp=day(0), message_id="i1")
    client.group("ada", "acme", {"seats": 3}, context={"locale": "de"}, timestamp=day(1))
    client.identify("bob", {"plan": "trial"}, timestamp=day(1))  # carries neither: no row
    client.alias("crm-7", "ada", integrations={"All": True}, timestamp=day(2))
    client.identify("ada", {"plan": "pro"}, context={"ip": "9.9.9.9"}, timestamp=day(3),
                    message_id="i1")  # a duplicate: neither applied nor kept
    with client.store.read() as tx:
        rows = tx.rows("call_contexts", "user_id = ?", ["ada"], order_by="at")
        assert tx.rows("call_contexts", "user_id = ?", ["bob"]) == []
    t0 = int(T0.timestamp()) * 10**6
    assert [(r["kind"], r["account_id"], r["message_id"], (r["at"] - t0) // (86_400 * 10**6),
             r["context"] and json.loads(r["context"]),
             r["integrations"] and json.loads(r["integrations"])) for r in rows] == [
        ("identify", None, "i1", 0, {"ip": "10.0.0.2"}, {"Salesforce": False}),
        ("group", "acme", None, 1, {"locale": "de"}, None),
        ("alias", None, None, 2, None, {"All": True})]
    identify, group, _bob, alias = segment_server.messages
    assert (identify["type"], identify["context"]["ip"], identify["integrations"]) == (
        "identify", "10.0.0.2", {"Salesforce": False})
    assert (group["type"], group["groupId"], group["context"]["locale"]) == (
        "group", "acme", "de")
    assert (alias["type"], alias["previousId"], alias["integrations"]) == (
        "alias", "crm-7", {"All": True})
    client.forget("ada")
    with client.store.read() as tx:
        assert tx.rows("call_contexts", "user_id = ?", ["ada"]) == []


def test_replay_equals_live_with_aliases_anonymous_ids_pages_and_stages(make_client,
                                                                        tmp_path):
    rules = [PRICING, ENGAGED, TEAM]
    messages = [
        {"type": "page", "anonymousId": "v1", "name": "Pricing", "timestamp": day(0)},
        {"type": "page", "anonymousId": "v1", "name": "Pricing", "timestamp": day(1)},
        {"type": "track", "userId": "old", "event": "report_generated", "timestamp": day(1)},
        {"type": "identify", "userId": "ada", "anonymousId": "v1", "traits": {"plan": "x"},
         "timestamp": day(2)},
        {"type": "page", "userId": "ada", "name": "Pricing", "timestamp": day(3)},
        {"type": "track", "userId": "ada", "event": "report_generated", "timestamp": day(3)},
        {"type": "alias", "previousId": "old", "userId": "ada", "timestamp": day(4)},
        {"type": "screen", "userId": "bob", "name": "Home", "timestamp": day(4)},
        {"type": "stage", "userId": "bob", "stage": "unqualified", "reason": "spam",
         "timestamp": day(5)},
        {"type": "track", "userId": "old", "event": "teammate_invited", "timestamp": day(6)},
    ]
    for n, message in enumerate(messages):
        message["timestamp"] = message["timestamp"].isoformat()
        message["messageId"] = f"m{n}"
    live = make_client(rules)
    for m in messages:
        at, mid = m["timestamp"], m["messageId"]
        if m["type"] in ("page", "screen"):
            getattr(live, m["type"])(m.get("userId"), m["name"], anonymous_id=m.get(
                "anonymousId"), timestamp=at, message_id=mid)
        elif m["type"] == "track":
            live.track(m["userId"], m["event"], timestamp=at, message_id=mid)
        elif m["type"] == "identify":
            live.identify(m["userId"], m["traits"], anonymous_id=m["anonymousId"],
                          timestamp=at, message_id=mid)
        elif m["type"] == "alias":
            live.alias(m["previousId"], m["userId"], timestamp=at, message_id=mid)
        else:
            live.set_stage(m["userId"], stage=m["stage"], reason=m["reason"], timestamp=at)
    path = tmp_path / "history.jsonl"
    path.write_text("".join(json.dumps(m) + "\n" for m in reversed(messages)))
    replay = pqlsdk.Client(database=":memory:", rules=rules)
    result = import_jsonl(replay, str(path))
    assert result.errors == () and result.skipped == {}

    def state(client):
        return ([(q.id, q.rule, q.subject_id, q.qualified_at) for q in
                 client.qualifications()],
                # (a stage line's source is "import", a live set_stage's "manual")
                {u: [(c.from_stage, c.to_stage, c.at, c.source.replace("import", "manual"))
                     for c in client.history(u)] for u in ("ada", "bob")})

    assert state(live) == state(replay)
    quals, stages = state(live)
    # pricing: 2 anonymous + 1 of ada's pages on day 3; engaged: old's report and ada's
    # count together from the alias (day 4); team: old's invite on day 6 is ada's
    assert [(rule, subject, at) for _, rule, subject, at in quals] == [
        ("pricing_visits", "ada", day(3)), ("engaged", "ada", day(4)),
        ("team", "ada", day(6))]
    assert stages["bob"][-1] == ("lead", "unqualified", day(5), "manual")
    assert [s[1] for s in stages["ada"]] == ["lead", "lead", "mql", "pql"]
    replay.close()


def test_forget_erases_the_links_too(make_client):
    client = make_client([])
    client.track(None, "visited", anonymous_id="v1", timestamp=day(0))
    client.identify("ada", {}, anonymous_id="v1", timestamp=day(1))
    client.forget("ada")
    with client.store.read() as tx:
        assert tx.rows("aliases", "user_id = ? OR tenant_key = ?", ["ada", "v1"]) == []
    client.track(None, "visited", anonymous_id="v1", timestamp=day(2))  # a new visitor
    assert [c.source for c in client.history("v1")] == ["first_seen"]


E10 = {"rules": [
    {"name": "acct10", "subject": "account", "all": [{"event": "e", "at_least": 10}]},
    {"name": "u10", "all": [{"event": "e", "at_least": 10}]},
]}


def _count(client, **subject) -> str:
    return client.explain(**subject).splitlines()[-1].strip()


def test_alias_leaves_the_old_accounts_events_in_it_and_a_later_group_keeps_them(
        make_client):
    """An alias moves the previous id's events as a group move does: those recorded with
    an account stay in its tenant (its rules count them) and the user takes a copy; when
    the user later joins that account, nothing is lost (review s3)."""
    client = make_client(E10)
    client.track("old-id", "e", account_id="accA", message_id="o1", timestamp=day(0))
    client.track("old-id", "e", account_id="accA", message_id="o2", timestamp=day(0))
    client.track("z", "e", account_id="accA", message_id="z1", timestamp=day(0))
    client.track("ada", "e", account_id="accB", message_id="a1", timestamp=day(0))
    client.alias("old-id", "ada", timestamp=day(1))
    assert _count(client, account_id="accA") == "✗ e: 3 of at least 10"  # z1, o1, o2
    assert _count(client, account_id="accB") == "✗ e: 1 of at least 10"  # a1
    assert "e: 3 of at least 10" in client.explain("ada")  # o1, o2, a1
    client.group("ada", "accA", timestamp=day(2))
    assert "e: 3 of at least 10" in client.explain("ada")  # o1, o2, a1: none deleted
    assert _count(client, account_id="accA") == "✗ e: 3 of at least 10"  # z1, o1, o2


ACCEPT = {"accept_within": "2d"}
EV2 = {"rules": [{"name": "ev", "all": [{"event": "e", "at_least": 2}]}],
       "lifecycle": ACCEPT}


def test_alias_into_a_settled_user_settles_the_previous_ids_handoffs(make_client):
    """Sales settled the user (a customer; disqualified): the anonymous id's hand-off is
    closed with it, and a disqualified user's incoming qualification joins the round its
    rejection closed, not the live one (review s13)."""
    client = make_client(EV2)
    client.track("w", "e", timestamp=day(0))
    client.set_stage("w", stage="disqualified", reason="competitor", timestamp=day(1))
    client.track(None, "e", anonymous_id="anw", timestamp=day(2))
    client.track(None, "e", anonymous_id="anw", timestamp=day(2))
    client.alias("anw", "w", timestamp=day(3))
    status = client.status("w")
    assert status.stage == "disqualified"
    assert [q.subject_id for q in status.qualifications] == ["w"]  # kept, not lost
    assert "ev" in status.progress  # not met in the live round
    client.track("cust", "x", timestamp=day(0))
    client.set_stage("cust", stage="customer", timestamp=day(1))
    client.track(None, "e", anonymous_id="anc", timestamp=day(2))
    client.track(None, "e", anonymous_id="anc", timestamp=day(2))
    client.identify("cust", anonymous_id="anc", timestamp=day(3))
    assert client.status("cust").stage == "customer"
    assert client.overdue(as_of=day(10)) == []


def test_alias_keeps_every_firing_of_the_previous_id_and_their_handoffs(make_client):
    """"pre" qualified in rounds 0 and 1 (sales rejected it between): both qualifications
    move to ada with their ids, and the open hand-off follows the round-1 one (review s14)."""
    client = make_client({"rules": [{"name": "r", "all": [{"event": "e"}]}],
                          "lifecycle": ACCEPT})
    client.track("pre", "e", timestamp=day(0))
    client.set_stage("pre", stage="unqualified", reason="no budget", timestamp=day(1))
    client.track("pre", "e", timestamp=day(2))
    before = [q.id for q in client.qualifications()]
    assert len(before) == 2
    client.track("ada", "x", timestamp=day(3))
    client.alias("pre", "ada", timestamp=day(4))
    after = client.qualifications()
    assert [(q.id, q.subject_id) for q in after] == [(before[0], "ada"), (before[1], "ada")]
    assert [o.qualification_id for o in client.overdue(as_of=day(30))] == [before[1]]
