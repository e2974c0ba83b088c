"""`pqlsdk report --html`: a self-contained page, rendered by a real headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner

import pqlsdk
from pqlsdk.cli import main
from pqlsdk.html_report import BAR, SCORE_BAR

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
T0 = datetime(2026, 10, 1, tzinfo=timezone.utc)
RULES_TOML = """
[[rules]]
name = "engaged"
stage = "mql"
  [[rules.all]]
  event = "report_generated"
  at_least = 2

[[rules]]
name = "weekly"
shadow = true
rearm = "7d"
  [[rules.all]]
  event = "report_generated"
  at_least = 1

[scoring]
[[scoring.behavior]]
event = "report_generated"
points = 7
"""

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="Chromium is not installed (.ci/run installs Debian's chromium)",
)


@pytest.fixture
def page(tmp_path):
    rules = tmp_path / "pql_rules.toml"
    rules.write_text(RULES_TOML)
    db = str(tmp_path / "pql.db")
    client = pqlsdk.Client(db, rules=str(rules))
    for n in range(40):
        user = f"u{n}"
        client.identify(user, {"lead_source": "ads" if n % 2 else "organic"}, timestamp=T0)
        for k in range(n % 4):
            client.track(user, "report_generated", timestamp=T0 + timedelta(hours=k + 1))
        if n % 4 >= 2:
            client.track(user, "report_generated", timestamp=T0 + timedelta(days=8))
    for n in range(0, 12, 3):
        client.set_stage(f"u{n + 2}", stage="sql", reason="demo", timestamp=T0 + timedelta(2))
    client.set_stage("u3", stage="unqualified", reason="no budget",
                     timestamp=T0 + timedelta(days=3))
    client.close()
    out = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["report", "--db", db, "--rules", str(rules),
                                       "--html", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_the_page_is_self_contained(page):
    html = page.read_text()
    assert re.search(r"<(script|link)\b", html) is None
    assert "http://" not in html and "https://" not in html
    assert html.count('class="bar"') == len(pqlsdk.STAGES)
    assert '<table id="rules">' in html and "no budget (1)" in html
    # weekly (a shadow rule: it moves no stage) re-arms after 7 days: the 20 users who
    # report again on day 8 fire twice, so 30 subjects qualified in 50 firings
    assert re.search(r"<td>weekly \(shadow\)</td><td>30</td><td>50</td>", html)


@needs_chromium
def test_chromium_renders_the_chart_and_the_numbers(page, tmp_path):
    from PIL import Image

    assert CHROMIUM is not None, "CI must install chromium"
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
             "--window-size=1000,1400"]
    url = page.as_uri()
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True,
                         timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    # the funnel as rendered: 40 leads entered, 20 became mqls (those with 2+ reports)
    assert re.search(r'data-stage="lead"[^>]*>(</rect>)?<text[^>]*>40</text>', dom.stdout)
    assert re.search(r'data-stage="mql"[^>]*>(</rect>)?<text[^>]*>20</text>', dom.stdout)
    assert "<td>lead</td><td>40</td>" in dom.stdout.replace("\n", "")

    shot = tmp_path / "report.png"
    done = subprocess.run([*flags, f"--screenshot={shot}", url], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    colors = image.getcolors(maxcolors=1 << 20)
    by_color = {rgb: count for count, rgb in colors}
    bar = tuple(int(BAR[i:i + 2], 16) for i in (1, 3, 5))
    score_bar = tuple(int(SCORE_BAR[i:i + 2], 16) for i in (1, 3, 5))
    assert by_color.get(bar, 0) > 5_000, "the funnel bars were not painted"
    assert by_color.get(score_bar, 0) > 2_000, "the score histogram was not painted"
