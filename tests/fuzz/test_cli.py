"""Fuzz the command line's arguments: a user id, bounds, a rule name, a trait to split by.

Property: exit code 0, 1 or 2 (2 for bad input), never a Python traceback.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from pqlsdk.cli import main

from . import fuzz
from .harness import RULES
from .strategies import texts

arguments = st.one_of(texts.filter(lambda t: "\x00" not in t),
                      st.sampled_from(["seed", "2026-01-01", "0001-01-01T00:00:00+01:00"]))

#: strategies holding long text make hypothesis warn about their repr; expected here
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")


@fuzz(0.5)
@given(command=st.sampled_from(["status", "status-account", "qualifications", "funnel",
                                "rules-report"]), value=arguments, other=arguments)
def test_cli_arguments(harnesses, tmp_path_factory, command, value, other):
    h = harnesses("cli")
    rules = tmp_path_factory.getbasetemp() / "fuzz-cli-rules.toml"
    if not rules.exists():
        rules.write_text('[[rules]]\nname = "engaged"\n[[rules.all]]\nevent = "report"\n')
    h.attempt(lambda c: None)  # counts the example; recycles the file when it is time
    db = ["--db", h.path]
    args = {
        "status": ["status", value, *db, "--rules", str(rules)],
        "status-account": ["status", "--account", value, *db],
        "qualifications": ["qualifications", *db, "--since", value, "--rule", other],
        "funnel": ["funnel", *db, "--since", value, "--until", other, "--by", other],
        "rules-report": ["rules-report", *db, "--since", value],
    }[command]
    before = h.dump()
    result = CliRunner().invoke(main, args)
    assert result.exit_code in (0, 1, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        repr(result.exception))
    assert h.dump() == before
    assert RULES  # the harness's rules made the file
