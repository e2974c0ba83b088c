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
from .store import is_postgres
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
    if must_exist:
        _must_exist(db)
    return Client(db, rules=rules, **options)


def _must_exist(db: str) -> None:
    if db != ":memory:" and not is_postgres(db) and not os.path.exists(db):
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
@rules_option
@click.option("--accept-within", help="The deadline, e.g. 2d (default: the rules file's "
                                      "[lifecycle] accept_within).")
@click.option("--as-of", help="Overdue as of this ISO-8601 time (default now).")
@json_option
@_guard
def overdue(db: str, busy_timeout: float, rules: str | None, accept_within: str | None,
            as_of: str | None, as_json: bool) -> None:
    """Qualified leads sales has neither accepted (sql or later) nor rejected in time,
    oldest first.

    \b
    Example:
        pqlsdk overdue --db pql.db --rules pql_rules.toml
        pqlsdk overdue --db pql.db --accept-within 2d --json
    """
    deadline: Any = accept_within
    if deadline is None and rules is not None:
        deadline = load_rules(rules).lifecycle.accept_within
    if deadline is None:
        raise BadInput("overdue needs a deadline: --accept-within 2d, or --rules with "
                       "[lifecycle] accept_within")
    with _open(db, None, busy_timeout=busy_timeout,
               lifecycle={"accept_within": deadline}) as client:
        found = client.overdue(as_of=_when(as_of, "as_of"))
    _print_overdue(found, as_json)


def _print_overdue(found: list[Any], as_json: bool) -> None:
    if as_json:
        _print_json([o.to_dict() for o in found])
        return
    click.echo(f"{'qualified at (UTC)':<20}{'due at (UTC)':<20}{'rule':<24}{'stage':<8}"
               "subject")
    for o in found:
        click.echo(f"{o.qualified_at:%Y-%m-%d %H:%M}    {o.due_at:%Y-%m-%d %H:%M}    "
                   f"{o.rule:<24}{o.stage:<8}{o.subject_type} {o.subject_id}")


@main.command()
@db_option
@click.option("--since", help="Count entries at or after this ISO-8601 time.")
@click.option("--until", help="Count moves up to this ISO-8601 time.")
@click.option("--by", help="Split by a trait, e.g. lead_source.")
@click.option("--subject", type=click.Choice(["user", "account"]), default="user",
              show_default=True)
@click.option("--to", help="Also the share of each stage that reached this one, e.g. sql.")
@click.option("--exclude-rejected", is_flag=True,
              help="Leave out subjects now unqualified or disqualified.")
@json_option
@_guard
def funnel(db: str, busy_timeout: float, since: str | None, until: str | None,
           by: str | None, subject: str, to: str | None, exclude_rejected: bool,
           as_json: bool) -> None:
    """Stage-to-stage conversion: entered, moved on, conversion rate, median time in stage.

    \b
    Example:
        pqlsdk funnel --db pql.db --by lead_source --since 2026-10-01
    """
    with _open(db, None, busy_timeout=busy_timeout) as client:
        result = client.funnel(since=_when(since, "since"), until=_when(until, "until"),
                               by=by, subject=subject, to=to,
                               exclude_rejected=exclude_rejected)
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
@db_option
@click.option("--stage", required=True,
              help="Purge users now at this stage, e.g. disqualified.")
@click.option("--older-than", required=True,
              help="Who entered it at least this long ago, e.g. 180d.")
@click.option("--as-of", help="Measure the age as of this ISO-8601 time (default now).")
@click.option("--yes", "apply", is_flag=True,
              help="Erase them (without it, a dry run lists who would go).")
@json_option
@_guard
def purge(db: str, busy_timeout: float, stage: str, older_than: str, as_of: str | None,
          apply: bool, as_json: bool) -> None:
    """Erase old users of a stage the way forget does (a periodic purge of disqualified
    leads). A dry run unless --yes.

    \b
    Example:
        pqlsdk purge --db pql.db --stage disqualified --older-than 180d          # who
        pqlsdk purge --db pql.db --stage disqualified --older-than 180d --yes    # erase
    """
    with _open(db, None, busy_timeout=busy_timeout) as client:
        found = client.purge(stage=stage, older_than=older_than,
                             as_of=_when(as_of, "as_of"), dry_run=not apply)
    if as_json:
        _print_json({"purged" if apply else "would_purge": found})
        return
    for user in found:
        click.echo(user)
    verb = "purged" if apply else "would purge (dry run; --yes to erase)"
    click.echo(f"{verb}: {len(found)} user(s) at {stage} for {older_than} or more",
               err=True)


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
    if is_postgres(db):
        raise BadInput("doctor checks a SQLite file; on PostgreSQL use the server's own "
                       "tools (amcheck, pg_stat_user_tables)")
    _must_exist(db)
    report = diagnose(db, busy_timeout)
    if as_json:
        _print_json(report.to_dict())
    else:
        click.echo(report.text())
    if report.problems:
        sys.exit(1)


@main.command(name="copy")
@click.argument("source", type=click.Path(exists=True, dir_okay=False))
@click.argument("target")
@click.option("--schema", default="pqlsdk", show_default=True,
              help="The PostgreSQL schema pqlsdk's tables live in.")
def copy_(source: str, target: str, schema: str) -> None:
    """Copy an embedded SQLite file into PostgreSQL: events, users, accounts, history,
    qualifications, rollups, import bookkeeping and the outbox rows still pending.

    Idempotent and resumable: run it again after a stop and it goes on where it stopped;
    on a finished copy it adds nothing. Stop the application's delivery (or the
    application) first, so that pending rows are not delivered from both stores.

    \b
    Example:
        pqlsdk copy pql.db postgresql://app@db:5432/app
    """
    from .copy import copy_file, total_rows

    if not is_postgres(target):
        raise BadInput(f"the target must be a postgresql:// URL (got {target!r})")
    if sys.stderr.isatty():
        with click.progressbar(length=total_rows(source), label="copying",
                               file=sys.stderr) as bar:
            result = copy_file(source, target, schema=schema, progress=bar.update)
    else:
        result = copy_file(source, target, schema=schema)
    for table, count in result.copied.items():
        click.echo(f"{table}: {count} row(s) copied")


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


def _callback(spec: str) -> Callable[..., Any]:
    """``module:attribute`` → the application's callback (its name is its outbox identity)."""
    import importlib

    module, _, attribute = spec.partition(":")
    if not module or not attribute:
        raise BadInput(f"--callback takes module:function (got {spec!r})")
    try:
        found: Any = importlib.import_module(module)
        for part in attribute.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as exc:
        raise BadInput(f"--callback {spec}: {exc}") from None
    if not callable(found):
        raise BadInput(f"--callback {spec} is not callable")
    return found


@main.command()
@db_option
@rules_option
@click.option("--as-of", help="Evaluate as of this ISO-8601 time instead of now.")
@click.option("--callback", "callbacks", multiple=True, metavar="MODULE:FUNCTION",
              help="An application callback to deliver new qualifications to (repeatable); "
                   "its module must be importable (e.g. PYTHONPATH=.).")
@click.option("--segment-write-key", envvar="SEGMENT_WRITE_KEY",
              help="Forward new qualifications to Segment (env SEGMENT_WRITE_KEY).")
@click.option("--segment-host", envvar="SEGMENT_HOST", default=None,
              help="Segment's API host (env SEGMENT_HOST).")
@click.option("--flush-timeout", type=click.FloatRange(min=0), default=30.0,
              show_default=True, help="Seconds to deliver before exiting; what is left "
                                      "stays in the outbox for the next run.")
@json_option
@_guard
def evaluate(db: str, busy_timeout: float, rules: str | None, as_of: str | None,
             callbacks: tuple[str, ...], segment_write_key: str | None,
             segment_host: str | None, flush_timeout: float, as_json: bool) -> None:
    """Re-check every subject against the rules (what time alone changes: at_most, not,
    windows) and record new qualifications: for cron or a systemd timer. Safe when two
    hosts run it at once: writers take turns and each qualification is recorded once.

    \b
    Example:
        */15 * * * *  pqlsdk evaluate --db /var/lib/app/pql.db --rules pql_rules.toml \\
                        --callback myapp.pql:notify_sales
    """
    if rules is None:
        raise BadInput("evaluate needs --rules (or PQLSDK_RULES)")
    segment = None
    if segment_write_key:
        from segment.analytics import Client as SegmentClient

        options: dict[str, Any] = {"host": segment_host} if segment_host else {}
        segment = SegmentClient(write_key=segment_write_key, sync_mode=True, **options)
    hooks = [_callback(spec) for spec in callbacks]
    with _open(db, rules, busy_timeout=busy_timeout, on_qualified=hooks, segment=segment,
               sync_mode=True) as client:
        found = client.evaluate(as_of=_when(as_of, "as_of"))
        delivered = client.flush(timeout=flush_timeout)
    if as_json:
        _print_json({"qualified": [q.to_dict() for q in found], "delivered": delivered})
        return
    click.echo(f"{len(found)} new qualification(s)")
    for q in found:
        click.echo(f"  {q.subject_type} {q.subject_id}: {q.rule} -> {q.stage}")
    if not delivered:
        click.echo("some deliveries are pending (see: pqlsdk deliveries)")


@main.command()
@db_option
@click.option("--failed", "only_failed", is_flag=True, help="Only the failed deliveries.")
@click.option("--retry", is_flag=True,
              help="Make every failed delivery pending again (due now) before listing.")
@json_option
@_guard
def deliveries(db: str, busy_timeout: float, only_failed: bool, retry: bool,
               as_json: bool) -> None:
    """Show the outbox: per destination what is pending, how old, what failed and why;
    then each row. --retry revives the failed ones for the application to deliver.

    \b
    Example:
        pqlsdk deliveries --db pql.db --failed
        pqlsdk deliveries --db pql.db --retry
    """
    with _open(db, None, busy_timeout=busy_timeout, sync_mode=True) as client:
        revived = client.retry_failed() if retry else 0
        health = client.health()
        rows = client.deliveries(status="failed" if only_failed else None)
    if as_json:
        _print_json({"revived": revived, "health": health.to_dict(),
                     "deliveries": [{"id": d.id, "destination": d.destination,
                                     "kind": d.kind, "user_id": d.user_id,
                                     "status": d.status, "attempts": d.attempts,
                                     "next_attempt_at": d.next_attempt_at.isoformat(),
                                     "last_error": d.last_error,
                                     "created_at": d.created_at.isoformat()}
                                    for d in rows]})
        return
    if retry:
        click.echo(f"{revived} failed deliver{'y' if revived == 1 else 'ies'} made pending")
    click.echo(f"{'destination':<40}{'pending':>8}{'oldest':>10}{'failed':>8}  last error")
    for dest in health.destinations:
        age = "-" if dest.oldest_pending_age is None else f"{dest.oldest_pending_age:.0f}s"
        click.echo(f"{dest.destination:<40}{dest.pending:>8}{age:>10}{dest.failed:>8}  "
                   f"{dest.last_error or '-'}")
    if rows:
        click.echo("")
        click.echo(f"{'id':>8}  {'status':<8}{'tries':>6}  {'destination':<36}{'user':<16}"
                   "last error")
    for d in rows:
        click.echo(f"{d.id:>8}  {d.status:<8}{d.attempts:>6}  {d.destination:<36}"
                   f"{d.user_id or '-':<16}{d.last_error or '-'}")
