"""The ``pqlsdk`` command line: a command per verb, tables for people, ``--json`` for programs.

Exit codes: 0 success, 2 bad input (a bad rules file, a bad JSONL line, a bad option),
1 anything else.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from functools import wraps
from typing import Any

import click

from . import __version__, html_report
from .client import Client
from .errors import PqlError, UnknownSubject, ValidationError
from .filecheck import diagnose
from .importer import ImportStopped, import_jsonl, open_source
from .reports import format_backtest, format_funnel, format_rule_report, format_suggestions
from .rules import RuleSet, load_rules
from .timestamps import coerce, to_micros


class BadInput(click.ClickException):
    """Bad input: exit code 2."""

    exit_code = 2


def _guard(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn pqlsdk's errors into messages and exit codes (2 bad input, 1 the rest)."""

    @wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (ValidationError, UnknownSubject, ImportStopped) as exc:
            raise BadInput(str(exc)) from None
        except PqlError as exc:
            raise click.ClickException(str(exc)) from None

    return run


_db = click.option("--db", "--database", "db", default="pql.db", show_default=True,
                  envvar="PQLSDK_DB", help="The SQLite file (env PQLSDK_DB).")
_busy = click.option("--busy-timeout", type=click.FloatRange(min=0), default=30.0,
                     show_default=True, envvar="PQLSDK_BUSY_TIMEOUT",
                     help="Seconds to wait for another process's write lock before giving "
                          "up (env PQLSDK_BUSY_TIMEOUT).")


def db_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--db`` and ``--busy-timeout``: every command that opens the database takes both."""
    return _db(_busy(command))


rules_option = click.option("--rules", type=click.Path(dir_okay=False), envvar="PQLSDK_RULES",
                            help="The rules TOML file (env PQLSDK_RULES).")
json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print JSON for programs instead of a table.")


outcome_option = click.option(
    "--outcome", default="customer", show_default=True,
    help="What counts as converting: a stage (sql, opportunity, customer...) or "
         "event:NAME.")
horizon_option = click.option("--horizon", default="30d", show_default=True,
                              help="How soon after qualifying the outcome must come.")
period_options = [
    click.option("--since", help="Only qualifications at or after this ISO-8601 time."),
    click.option("--until", help="Replay up to this ISO-8601 time (default now)."),
    click.option("--subject", type=click.Choice(["user", "account"]), default="user",
                 show_default=True),
]


def _when(value: str | None, name: str) -> datetime | None:
    return None if value is None else coerce(value, name)


def _open(db: str, rules: str | None, *, must_exist: bool = True, **options: Any) -> Client:
    if must_exist and db != ":memory:" and not os.path.exists(db):
        raise BadInput(f"no database at {db} (pass --db, or import some history first)")
    return Client(db, rules=rules, **options)


def _must_exist(db: str) -> None:
    if db != ":memory:" and not os.path.exists(db):
        raise BadInput(f"no database at {db} (pass --db, or import some history first)")


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pqlsdk")
def main() -> None:
    """pqlsdk: product-qualified leads from your product's usage.

    \b
    Example:
        pqlsdk check pql_rules.toml
        pqlsdk import events.jsonl --db pql.db --rules pql_rules.toml
        pqlsdk status ada --db pql.db --rules pql_rules.toml
        pqlsdk funnel --db pql.db --by lead_source
        pqlsdk doctor --db pql.db
    """


@main.command()
@click.argument("rules", type=click.Path(dir_okay=False))
@json_option
@_guard
def check(rules: str, as_json: bool) -> None:
    """Validate a rules file and summarize each rule and what it reads.

    \b
    Example:
        pqlsdk check pql_rules.toml
    Exit code 2, with the file, the rule and the key, if the file is malformed.
    """
    ruleset = load_rules(rules)
    summary = [_rule_summary(ruleset, rule) for rule in ruleset.rules]
    if as_json:
        _print_json({"rules": summary, "scoring": ruleset.scoring is not None})
        return
    click.echo(f"{rules}: {len(summary)} rule(s) OK")
    for item in summary:
        click.echo(f"- {item['name']} ({item['subject']} -> {item['stage']}"
                   + (", shadow" if item["shadow"] else "") + ")"
                   + (f": {item['description']}" if item["description"] else ""))
        click.echo(f"    events: {', '.join(item['events']) or '-'}; "
                   f"traits: {', '.join(item['traits']) or '-'}"
                   + (f"; scores: {', '.join(item['scores'])}" if item["scores"] else "")
                   + f"; version {item['version']}")
    if ruleset.scoring is not None:
        click.echo(f"scoring: {len(ruleset.scoring.behavior)} behaviour and "
                   f"{len(ruleset.scoring.fit)} fit line(s)")


def _rule_summary(ruleset: RuleSet, rule: Any) -> dict[str, Any]:
    return {"name": rule.name, "subject": rule.subject, "stage": rule.stage,
            "description": rule.description, "events": sorted(ruleset.events_of(rule)),
            "traits": sorted(ruleset.traits_of(rule)), "scores": sorted(rule.scores),
            "shadow": rule.shadow, "version": rule.version}


@main.command("import")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@db_option
@rules_option
@click.option("--strict", is_flag=True, help="Stop at the first bad line.")
@click.option("--deliver", is_flag=True,
              help="Send imported qualifications to Segment (off by default).")
@click.option("--segment-write-key", envvar="PQLSDK_SEGMENT_WRITE_KEY",
              help="Segment write key, for --deliver (env PQLSDK_SEGMENT_WRITE_KEY).")
@click.option("--segment-host", envvar="PQLSDK_SEGMENT_HOST", help="Segment API host.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@json_option
@_guard
def import_(file: str, db: str, busy_timeout: float, rules: str | None, strict: bool,
            deliver: bool,
            segment_write_key: str | None, segment_host: str | None, quiet: bool,
            as_json: bool) -> None:
    """Import Segment-spec track, identify and group messages from JSONL, plain or gzipped.

    Messages may come in any order: they are replayed in timestamp order, so the
    qualifications and stages are those live traffic would have produced. Re-importing
    adds nothing (by messageId); an interrupted import resumes when run again. Bad lines
    are reported with their numbers and the rest is imported (exit code 2 at the end),
    whatever they hold. A gzipped file (Segment's archives) is read as it is.

    \b
    Example:
        pqlsdk import export.jsonl --db pql.db --rules pql_rules.toml
        pqlsdk import 2026-11-01.json.gz --db pql.db --rules pql_rules.toml
        zcat export.jsonl.gz | pqlsdk import - --db pql.db --rules pql_rules.toml
    """
    segment = None
    if deliver:
        if not segment_write_key:
            raise BadInput("--deliver needs --segment-write-key (or PQLSDK_SEGMENT_WRITE_KEY)")
        from segment.analytics import Client as SegmentClient

        segment = SegmentClient(write_key=segment_write_key, host=segment_host,
                                sync_mode=True)
    with open_source(file) as source:  # a missing file: exit 2 before any database is made
        client = _open(db, rules, must_exist=False, segment=segment, sync_mode=True,
                       busy_timeout=busy_timeout)
        try:
            show = not quiet and sys.stderr.isatty()
            result = import_jsonl(client, source, strict=strict, deliver=deliver,
                                  progress=_progress if show else None)
            if deliver:
                client.flush(timeout=60)
        finally:
            client.close()
    if as_json:
        _print_json(result.to_dict())
    else:
        skipped = ", ".join(f"{n} {kind}" for kind, n in sorted(result.skipped.items()))
        click.echo(f"read {result.read} line(s): applied {result.applied}, "
                   f"{result.duplicates} already imported, {len(result.errors)} bad"
                   + (f", skipped {skipped}" if skipped else "")
                   + f"; {result.qualifications} qualification(s)")
    for number, reason in result.errors:
        click.echo(f"line {number}: {reason}", err=True)
    if result.errors:
        sys.exit(2)


def _progress(batches: Iterable[Any], total: int) -> Iterable[Any]:
    started = time.monotonic()
    done = [0]

    def rate(_: Any) -> str:
        elapsed = time.monotonic() - started
        return f"{done[0] / elapsed:,.0f} msg/s" if elapsed > 0 and done[0] else ""

    with click.progressbar(batches, label="replaying", file=sys.stderr, show_eta=True,
                           item_show_func=rate) as bar:
        for batch in bar:
            yield batch
            done[0] = min(total, done[0] + 2_000)


@main.command()
@click.argument("user", required=False)
@click.option("--account", help="An account id instead of a user.")
@db_option
@rules_option
@json_option
@_guard
def status(user: str | None, account: str | None, db: str, busy_timeout: float,
           rules: str | None,
           as_json: bool) -> None:
    """A user's (or an account's) stage, score, qualifications and progress per rule.

    \b
    Example:
        pqlsdk status ada --db pql.db --rules pql_rules.toml
        pqlsdk status --account acme --db pql.db --rules pql_rules.toml
    """
    if (user is None) == (account is None):
        raise BadInput("give a USER or --account ACCOUNT")
    with _open(db, rules, busy_timeout=busy_timeout) as client:
        subject = {"user_id": user} if user else {"account_id": account}
        state = client.status(**subject)
        score = client.score(**subject) if client.rules.scoring is not None else None
        if as_json:
            _print_json({
                "subject_type": state.subject_type, "subject_id": state.subject_id,
                "stage": state.stage,
                "score": None if score is None else {"fit": score.fit,
                                                     "behavior": score.behavior,
                                                     "total": score.total},
                "qualifications": [q.to_dict() for q in state.qualifications],
                "progress": {k: v.to_dict() for k, v in state.progress.items()},
            })
            return
        if score is not None:
            click.echo(f"score: {score.total:g} (fit {score.fit:g}, behaviour "
                       f"{score.behavior:g})")
        click.echo(client.explain(**subject))


@main.command()
@db_option
@click.option("--since", help="Only those qualified at or after this ISO-8601 time.")
@click.option("--rule", help="Only this rule's.")
@json_option
@_guard
def qualifications(db: str, busy_timeout: float, since: str | None, rule: str | None,
                   as_json: bool) -> None:
    """List recorded qualifications, oldest first.

    \b
    Example:
        pqlsdk qualifications --db pql.db --since 2026-11-01 --rule team_activation
    """
    with _open(db, None, busy_timeout=busy_timeout) as client:
        found = client.qualifications(since=_when(since, "since"), rule=rule)
    if as_json:
        _print_json([q.to_dict() for q in found])
        return
    click.echo(f"{'qualified at (UTC)':<20}{'rule':<24}{'stage':<8}{'subject':<26}user")
    for q in found:
        click.echo(f"{q.qualified_at:%Y-%m-%d %H:%M}    {q.rule:<24}{q.stage:<8}"
                   f"{q.subject_type + ' ' + q.subject_id:<26}{q.user_id}")


@main.command()
@db_option
@click.option("--since", help="Count entries at or after this ISO-8601 time.")
@click.option("--until", help="Count moves up to this ISO-8601 time.")
@click.option("--by", help="Split by a trait, e.g. lead_source.")
@click.option("--subject", type=click.Choice(["user", "account"]), default="user",
              show_default=True)
@json_option
@_guard
def funnel(db: str, busy_timeout: float, since: str | None, until: str | None,
           by: str | None, subject: str,
           as_json: bool) -> None:
    """Stage-to-stage conversion: entered, moved on, conversion rate, median time in stage.

    \b
    Example:
        pqlsdk funnel --db pql.db --by lead_source --since 2026-10-01
    """
    with _open(db, None, busy_timeout=busy_timeout) as client:
        result = client.funnel(since=_when(since, "since"), until=_when(until, "until"),
                               by=by, subject=subject)
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else format_funnel(result))


@main.command("rules-report")
@db_option
@rules_option
@click.option("--since", help="Only qualifications at or after this ISO-8601 time.")
@json_option
@_guard
def rules_report(db: str, busy_timeout: float, rules: str | None, since: str | None,
                 as_json: bool) -> None:
    """Per rule: leads qualified, how many reached sql/opportunity/customer, how many sales
    rejected, and why.

    \b
    Example:
        pqlsdk rules-report --db pql.db --rules pql_rules.toml
    """
    with _open(db, rules, busy_timeout=busy_timeout) as client:
        outcomes = client.rule_report(since=_when(since, "since"))
    if as_json:
        _print_json([o.to_dict() for o in outcomes])
    else:
        click.echo(format_rule_report(outcomes))


@main.command()
@db_option
@rules_option
@click.option("--html", "html_path", required=True, type=click.Path(dir_okay=False),
              help="Where to write the page.")
@click.option("--subject", type=click.Choice(["user", "account"]), default="user",
              show_default=True)
@click.option("--backtest/--no-backtest", "with_backtest", default=True, show_default=True,
              help="Include the backtest of the rules and suggested rules.")
@outcome_option
@horizon_option
@_guard
def report(db: str, busy_timeout: float, rules: str | None, html_path: str, subject: str,
           with_backtest: bool, outcome: str, horizon: str) -> None:
    """Write one self-contained HTML page: the funnel chart, conversions, rule outcomes,
    the distribution of scores, and which rules are true (backtest and suggestions).

    \b
    Example:
        pqlsdk report --db pql.db --rules pql_rules.toml --html report.html
    """
    with _open(db, rules, busy_timeout=busy_timeout) as client:
        tested = found = None
        if with_backtest:
            tested = client.backtest(outcome=outcome, horizon=horizon, subject=subject)
            found = client.suggest(outcome=outcome, horizon=horizon, subject=subject)
        page = html_report.render(
            client.funnel(subject=subject),
            client.rule_report(),
            client.scores(subject=subject) if client.rules.scoring is not None else None,
            generated=datetime.now(timezone.utc),
            backtest=tested,
            suggestions=found,
        )
    with open(html_path, "w", encoding="utf-8") as handle:
        handle.write(page)
    click.echo(f"wrote {html_path}")


@main.command()
@click.argument("user")
@db_option
@_guard
def forget(user: str, db: str, busy_timeout: float) -> None:
    """Erase a user for a privacy request: events, traits, qualifications, history, pending
    deliveries, staged imports; no byte of the user is left in the file or its WAL, and no
    later import brings the user back.

    \b
    Example:
        pqlsdk export ada --db pql.db > ada.json    # what the user may ask to see
        pqlsdk forget ada --db pql.db
    """
    with _open(db, None, busy_timeout=busy_timeout) as client:
        client.forget(user)
    click.echo(f"forgot {user}")


@main.command()
@click.argument("user")
@db_option
@_guard
def export(user: str, db: str, busy_timeout: float) -> None:
    """Print, as JSON, everything pqlsdk keeps about a user (an access request): traits,
    events, stages, qualifications, staged imports and pending deliveries.

    \b
    Example:
        pqlsdk export ada --db pql.db > ada.json
    """
    with _open(db, None, busy_timeout=busy_timeout) as client:
        _print_json(client.export(user))


@main.command()
@db_option
@json_option
@_guard
def doctor(db: str, busy_timeout: float, as_json: bool) -> None:
    """Check the whole file (SQLite's full integrity check, which reads every page) and
    report its size and growth.

    Exit code 0 when the file is sound, 1 when it is damaged (with what SQLite found and
    how to recover), 2 when there is no file. Read-only: safe on a file in use.

    \b
    Example:
        pqlsdk doctor --db pql.db
        sqlite3 pql.db ".recover" | sqlite3 recovered.db && pqlsdk doctor --db recovered.db
    """
    _must_exist(db)
    report = diagnose(db, busy_timeout)
    if as_json:
        _print_json(report.to_dict())
    else:
        click.echo(report.text())
    if report.problems:
        sys.exit(1)


@main.command()
@db_option
@rules_option
@click.option("--retention", required=True,
              help="Keep events this recent, e.g. 400d (units s, m, h, d, w).")
@click.option("--as-of", help="Prune as of this ISO-8601 time instead of now.")
@json_option
@_guard
def prune(db: str, busy_timeout: float, rules: str | None, retention: str,
          as_of: str | None, as_json: bool) -> None:
    """Fold events older than the retention into per-subject rollups and remove them, so
    that the file stops growing; counts, distinct values, sums and scores without a window
    stay exact. With --rules, rollups keep only the properties the rules read (smaller);
    without, they keep every property.

    \b
    Example:
        pqlsdk prune --db pql.db --rules pql_rules.toml --retention 400d
    Exit code 2 if a rule's window is longer than the retention.
    """
    with _open(db, rules, busy_timeout=busy_timeout, retention=retention,
               sync_mode=True) as client:
        before = client.store.usage(_now())
        removed = client.prune(as_of=_when(as_of, "as_of"))
        after = client.store.usage(_now())
    if as_json:
        _print_json({"removed": removed,
                     "bytes": None if after is None else after.bytes,
                     "free_bytes": None if after is None else after.free_bytes})
        return
    click.echo(f"removed {removed:,} event(s) older than {retention}")
    if before is not None and after is not None:
        click.echo(f"file: {after.bytes:,} bytes, of which {after.free_bytes:,} free "
                   f"(reused before the file grows; was {before.free_bytes:,})")


def _now() -> int:
    return to_micros(datetime.now(timezone.utc))
def _period(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(period_options):
        command = option(command)
    return command


@main.command()
@click.argument("rules_file", required=False, type=click.Path(dir_okay=False))
@db_option
@rules_option
@outcome_option
@horizon_option
@_period
@click.option("--against", type=click.Choice(["current"]),
              help="Also list who RULES_FILE adds and drops compared with --rules.")
@json_option
@click.option("--html", "html_path", type=click.Path(dir_okay=False),
              help="Write an HTML page (with suggestions) instead of a table.")
@_guard
def backtest(rules_file: str | None, db: str, busy_timeout: float, rules: str | None,
             outcome: str, horizon: str, since: str | None, until: str | None, subject: str,
             against: str | None, as_json: bool, html_path: str | None) -> None:
    """Replay the stored history for a rules file and show, per rule, how many subjects it
    qualified, how many converted, precision (95% interval), recall, lift, lead time and
    missed converters. Read only.

    \b
    Example:
        pqlsdk backtest examples/pql_rules.toml --db pql.db
        pqlsdk backtest new_rules.toml --db pql.db --rules pql_rules.toml --against current
        pqlsdk backtest --db pql.db --rules pql_rules.toml --outcome event:subscription_started
    """
    if rules_file is None and rules is None:
        raise BadInput("give a RULES file (or --rules)")
    if against and (rules is None or rules_file is None):
        raise BadInput("--against current compares RULES_FILE with the --rules file: give both")
    with _open(db, rules, busy_timeout=busy_timeout) as client:
        result = client.backtest(rules_file, outcome=outcome, horizon=horizon,
                                 since=_when(since, "since"), until=_when(until, "until"),
                                 subject=subject, against=against)
        if html_path:
            found = client.suggest(outcome=outcome, horizon=horizon, subject=subject,
                                   since=_when(since, "since"), until=_when(until, "until"))
            page = html_report.render_backtest(result, found,
                                               generated=datetime.now(timezone.utc))
            with open(html_path, "w", encoding="utf-8") as handle:
                handle.write(page)
            click.echo(f"wrote {html_path}")
            return
    if as_json:
        _print_json(result.to_dict())
    else:
        click.echo(format_backtest(result))


@main.command()
@db_option
@outcome_option
@horizon_option
@_period
@click.option("--min-support", default=20, show_default=True, type=click.IntRange(min=1),
              help="Fewest subjects a candidate must qualify.")
@click.option("--top", default=10, show_default=True, type=click.IntRange(min=1))
@json_option
@_guard
def suggest(db: str, busy_timeout: float, outcome: str, horizon: str, since: str | None,
            until: str | None, subject: str, min_support: int, top: int, as_json: bool
            ) -> None:
    """Candidate rules found in the stored events, best lift first, each as TOML ready to
    paste into a rules file. Read only.

    \b
    Example:
        pqlsdk suggest --db pql.db --outcome customer --horizon 30d
    """
    with _open(db, None, busy_timeout=busy_timeout) as client:
        found = client.suggest(outcome=outcome, horizon=horizon, min_support=min_support,
                               top=top, since=_when(since, "since"),
                               until=_when(until, "until"), subject=subject)
    if as_json:
        _print_json([s.to_dict() for s in found])
    else:
        click.echo(format_suggestions(found))
