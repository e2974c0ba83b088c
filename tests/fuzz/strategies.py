"""Hostile input: text with surrogates, NUL, control and non-BMP characters; huge and tiny
numbers, NaN and infinities; deep nesting; timestamps at the calendar's edges with offsets;
wrong types."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

from hypothesis import strategies as st

SPECIAL = ["\x00", "\x1f", "\x01", "\x7f", "\ud800", "\udbff", "\udc00", "\udfff", "😀",
           "\U0010ffff", "\u202e", "\ufeff", "\u0301", "\n", "\t", " ", '"', "\\", "'", "%",
           "_", "$", ".", "[", "]", "{", "}", "é", "\u2028"]

characters = st.one_of(
    st.characters(),                                   # any valid character
    st.sampled_from(SPECIAL),
    st.integers(0xD800, 0xDFFF).map(chr),              # lone surrogates
    st.integers(0, 0x1F).map(chr),                     # control characters
)
texts = st.one_of(
    st.text(characters, max_size=12),
    st.sampled_from(["", " ", "\t\n", "u", "ada", "0", "report", "plan", "x" * 1024,
                     "x" * 1025, "😀" * 1024, "😀" * 1025]),
)
# built, not listed: hypothesis cannot repr an int of more than 4300 digits in a strategy
huge_ints = st.one_of(
    st.sampled_from([2**31, 2**53, 2**53 + 1, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**19]),
    st.sampled_from([400, 4299, 4300, 5000]).map(lambda digits: 10**digits),
)
numbers = st.one_of(
    st.integers(),
    st.integers(-(2**80), 2**80),
    huge_ints,
    st.floats(),                                       # NaN, infinities, subnormals
    st.sampled_from([1e308, -1e308, 5e-324, -0.0, float("nan"), float("inf")]),
)
offsets = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes)))
edge_datetimes = st.builds(
    lambda base, tz, delta: (base + delta).replace(tzinfo=tz),
    st.sampled_from([datetime.min, datetime.max, datetime(1970, 1, 1), datetime(2000, 2, 29)]),
    st.one_of(st.none(), st.just(timezone.utc), offsets),
    st.sampled_from([timedelta(0), timedelta(hours=1), timedelta(hours=-1),
                     timedelta(microseconds=1), timedelta(microseconds=-1)]),
).filter(lambda value: value is not None)
datetimes = st.one_of(
    st.datetimes(timezones=st.one_of(st.none(), st.just(timezone.utc), offsets)),
    st.builds(lambda d, tz: d.replace(tzinfo=tz),
              st.sampled_from([datetime.min, datetime.max]), offsets),
)
timestamps = st.one_of(
    st.none(),
    datetimes,
    datetimes.map(lambda d: d.isoformat()),
    datetimes.map(lambda d: d.isoformat().replace("+00:00", "Z")),
    st.sampled_from(["0001-01-01T00:00:00+01:00", "9999-12-31T23:00:00-02:00",
                     "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z", "2026-02-30",
                     "yesterday", "", "2026-01-01T00:00:00+24:00", "2026-01-01\x00"]),
    texts,
    numbers,
    st.dates(),
    st.just(date.max),
)
wrong_types = st.one_of(
    st.binary(max_size=8), st.sets(st.integers(), max_size=3), st.complex_numbers(),
    st.just(object()), st.just(Decimal("1.5")), st.just(Ellipsis),
)
ids = st.one_of(texts, texts, st.integers(), huge_ints, st.none(), st.booleans(),
                st.floats(), wrong_types)
keys = st.one_of(texts, texts, texts, st.integers(), st.none(), st.booleans(), st.floats())
scalars = st.one_of(st.none(), st.booleans(), numbers, texts, datetimes)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.tuples(inner, inner),
                            st.dictionaries(keys, inner, max_size=4)),
    max_leaves=12,
)


def nested(depth: int, leaf: object = 1) -> dict:
    """A dict nested ``depth`` levels (``{"k": {"k": ... leaf}}``)."""
    value: object = leaf
    for _ in range(depth - 1):
        value = {"k": value}
    return value if isinstance(value, dict) else {"k": value}


json_objects = st.one_of(
    st.none(),
    st.dictionaries(keys, json_values, max_size=5),
    st.dictionaries(texts, scalars, max_size=5),
    st.dictionaries(st.sampled_from(["plan", "seats", "n", "email", "provider"]), scalars,
                    max_size=4),
    st.integers(1, 3000).map(nested),
    st.integers(20, 40).map(lambda n: {"p": [nested(n)]}),
    st.integers(30_000, 40_000).map(lambda n: {"p": "x" * n}),
    st.integers(1, 5000).map(lambda n: {"p": "é" * n}),
    st.dictionaries(keys, wrong_types, min_size=1, max_size=2),
    json_values,                                       # not a dict at all, often
    wrong_types,
)
event_names = st.one_of(st.sampled_from(["report", "invite", "ordinary", "integration"]), ids)
stages = st.one_of(st.sampled_from(["subscriber", "lead", "mql", "pql", "sql", "opportunity",
                                    "customer", "unqualified", "disqualified"]), ids)
