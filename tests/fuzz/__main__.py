"""The long fuzz campaign: ``python -m tests.fuzz --examples 100000``.

Runs every test of the fuzz suite under the ``pqlsdk-fuzz-campaign`` profile with
``--examples`` examples per entry point (hypothesis's ``max_examples``), and prints how
many examples ran per entry point. Other arguments go to pytest (``-k track``, ``-x``, or
a test file to run only that one).
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv: list[str] | None = None) -> int:
    """Run the campaign; the exit code is pytest's."""
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("--examples", type=int, default=100_000,
                        help="examples per entry point (default 100000)")
    args, rest = parser.parse_known_args(argv)
    os.environ["PQLSDK_FUZZ_PROFILE"] = "pqlsdk-fuzz-campaign"
    os.environ["PQLSDK_FUZZ_EXAMPLES"] = str(args.examples)
    import pytest  # after the environment is set: the profile is read at import

    started = time.monotonic()
    paths = [] if any(arg.endswith(".py") or "::" in arg for arg in rest) else [
        os.path.dirname(os.path.abspath(__file__))]
    code = pytest.main([*paths, "-q",
                        "-p", "no:cacheprovider", "-W",
                        "ignore::hypothesis.errors.HypothesisWarning", "-W",
                        "ignore::pytest.PytestAssertRewriteWarning", *rest])
    print(f"fuzz campaign: {time.monotonic() - started:.0f} s, exit code {int(code)}")
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
