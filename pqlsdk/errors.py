"""The exceptions pqlsdk raises into application code."""

from __future__ import annotations


class PqlError(Exception):
    """Base class of every error pqlsdk raises on purpose."""


class ValidationError(PqlError, ValueError):
    """An argument to a public call was not acceptable; nothing was written.

    The message names the argument, says what was received and what is allowed::

        >>> client.track("", "report_generated")
        Traceback (most recent call last):
        pqlsdk.errors.ValidationError: user_id must be a non-empty string (got '')
    """


class UnknownSubject(PqlError, LookupError):
    """``status``, ``explain`` or ``score`` asked about a user or account pqlsdk has never
    seen."""


class RuleError(ValidationError):
    """A rules file, dict or object is malformed.

    The message names the source (file), the rule and the key, and what is allowed::

        pql_rules.toml: rule 'team_activation': all[0].at_lest: unknown key;
        allowed: at_least, at_most, distinct, event, sum, where, within

    ``Client(...)`` raises it before anything is stored, so no rule set is half-loaded.
    ``problem``, ``source``, ``rule`` and ``key`` carry the parts for programs.
    """

    def __init__(
        self,
        problem: str,
        *,
        source: str | None = None,
        rule: str | None = None,
        key: str | None = None,
    ) -> None:
        self.problem, self.source, self.rule, self.key = problem, source, rule, key
        where = []
        if source:
            where.append(source)
        if rule:
            where.append(f"rule {rule!r}")
        if key:
            where.append(key)
        super().__init__(": ".join([*where, problem]))

    def within(
        self, *, source: str | None = None, rule: str | None = None, key: str | None = None
    ) -> RuleError:
        """The same problem, located inside ``key`` of ``rule`` in ``source``."""
        inner = self.key or ""
        if key and inner:
            inner = f"{key}.{inner}"
        elif key:
            inner = key
        return RuleError(
            self.problem,
            source=source or self.source,
            rule=rule or self.rule,
            key=inner or None,
        )


class StoreError(PqlError):
    """The database file could not do what was asked; nothing of the failed call was
    written, and what was acknowledged before stays.

    The message names the file and says what to do. ``path`` carries the file (``None``
    for an in-memory database)::

        pql.db: another process held the write lock for more than 30 s ...
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class StoreBusy(StoreError):
    """Another connection held the write lock past ``busy_timeout``; retry later, or give
    ``busy_timeout=`` (``--busy-timeout``) more time."""


class StoreUnavailable(StoreError):
    """The PostgreSQL server could not be reached, went away, or a statement ran past
    ``statement_timeout``; nothing of the failed call was written. Retry later."""


class StoreRejected(StoreError):
    """The database refused the data of one call: it broke a constraint (a unique key it
    met again when run anew, so not a race with another writer; a check) or holds a value
    the database cannot store. The call's problem, not the store's: nothing of it was
    written, and other calls go on (an import reports the line and imports the rest)."""

    @classmethod
    def refused(cls, reason: str, *, path: str | None = None) -> StoreRejected:
        """The error for a call whose data the database refused, saying why (either
        engine's words)."""
        return cls(f"the database refused this call's data ({reason}); nothing of this "
                   f"call was written", path=path)


class StoreFull(StoreError):
    """The disk (or a quota, or ``max_page_count``) is full; free space and retry."""


class StoreCorrupt(StoreError):
    """The file is not a SQLite database or has a damaged page. Nothing more is written to
    it through this Client; recover with ``sqlite3 pql.db ".recover" | sqlite3 new.db``
    and check the result with ``pqlsdk doctor --db new.db``."""


class SchemaTooNew(StoreError):
    """The database was written by a newer pqlsdk than this one; upgrade pqlsdk to open it."""


class StoreClosed(StoreError):
    """The Client (and its connection) was closed; make a new one."""


class DeliveryNameWarning(UserWarning):
    """A callback registered without a ``name`` has no stable identity across restarts (a
    lambda, a closure, or a second callable of the same qualname)."""
