"""One self-contained HTML page for people: the funnel chart, conversions, rule outcomes and
the distribution of scores. No script, no network, no CDN: inline CSS and SVG only."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from html import escape

from .reports import Funnel, RuleOutcome, format_timespan

BAR = "#2f6fdf"
SCORE_BAR = "#18a36b"
_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 32px; color: #1d2330; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.meta { color: #667; } table { border-collapse: collapse; }
th, td { padding: 4px 12px; border-bottom: 1px solid #e3e6ee; text-align: right; }
th:first-child, td:first-child { text-align: left; } th { background: #f4f6fa; }
svg text { font: 13px system-ui, sans-serif; fill: #1d2330; }
"""


def render(funnel: Funnel, outcomes: Sequence[RuleOutcome], scores: Sequence[float] | None,
           *, title: str = "pqlsdk report", generated: datetime | None = None) -> str:
    """The report page as a string."""
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="meta">{funnel.subject_type}s'
        + (f" · generated {generated:%Y-%m-%d %H:%M} UTC" if generated else "") + "</p>",
        "<h2>Funnel</h2>",
        _funnel_chart(funnel),
        "<h2>Stage to stage</h2>",
        _funnel_table(funnel),
        "<h2>Rules</h2>",
        _rules_table(outcomes),
    ]
    if scores is not None:
        parts += ["<h2>Scores</h2>",
                  f'<p class="meta">Total score of each {funnel.subject_type}, '
                  f"in ten equal buckets (count above each bar, lower bound below).</p>",
                  _histogram(scores)]
    parts.append("</body></html>")
    return "\n".join(parts)


def _funnel_chart(funnel: Funnel) -> str:
    width, row, label = 640, 30, 110
    top = max((s.entered for s in funnel.stages), default=0) or 1
    rows = []
    for i, stage in enumerate(funnel.stages):
        y = i * row
        length = round((width - label - 60) * stage.entered / top)
        rows.append(
            f'<text x="0" y="{y + 19}">{stage.stage}</text>'
            f'<rect class="bar" data-stage="{stage.stage}" x="{label}" y="{y + 4}" '
            f'width="{length}" height="{row - 8}" fill="{BAR}"/>'
            f'<text x="{label + length + 6}" y="{y + 19}">{stage.entered}</text>'
        )
    height = row * len(funnel.stages)
    return (f'<svg id="funnel" role="img" aria-label="funnel" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}">{"".join(rows)}</svg>')


def _funnel_table(funnel: Funnel) -> str:
    head = ("<tr><th>stage</th><th>entered</th><th>moved on</th><th>conversion</th>"
            "<th>median time in stage</th></tr>")
    body = "".join(
        f"<tr><td>{s.stage}</td><td>{s.entered}</td><td>{s.moved_on}</td>"
        f"<td>{'-' if s.conversion is None else f'{s.conversion:.1%}'}</td>"
        f"<td>{format_timespan(s.median_time)}</td></tr>"
        for s in funnel.stages
    )
    return f'<table id="conversions">{head}{body}</table>'


def _rules_table(outcomes: Sequence[RuleOutcome]) -> str:
    head = ("<tr><th>rule</th><th>qualified</th><th>sql</th><th>opportunity</th>"
            "<th>customer</th><th>unqualified</th><th>disqualified</th>"
            "<th>top reasons</th></tr>")
    body = "".join(
        f"<tr><td>{escape(o.rule)}</td><td>{o.qualified}</td><td>{o.reached['sql']}</td>"
        f"<td>{o.reached['opportunity']}</td><td>{o.reached['customer']}</td>"
        f"<td>{o.rejected['unqualified']}</td><td>{o.rejected['disqualified']}</td>"
        f"<td>{escape('; '.join(f'{r} ({n})' for r, n in o.top_reasons))}</td></tr>"
        for o in outcomes
    )
    return f'<table id="rules">{head}{body}</table>'


def _histogram(scores: Sequence[float], buckets: int = 10) -> str:
    if not scores:
        return "<p>No scored subjects.</p>"
    low, high = min(scores), max(scores)
    step = (high - low) / buckets or 1
    counts = [0] * buckets
    for value in scores:
        counts[min(buckets - 1, int((value - low) / step))] += 1
    width, height, gap = 640, 160, 4
    bar = (width - gap * buckets) / buckets
    top = max(counts)
    rects = []
    for i, count in enumerate(counts):
        h = round((height - 40) * count / top)
        x = round(i * (bar + gap))
        rects.append(
            f'<rect class="score-bar" x="{x}" y="{height - 20 - h}" width="{round(bar)}" '
            f'height="{h}" fill="{SCORE_BAR}"/>'
            f'<text x="{x}" y="{height - 4}">{low + i * step:g}</text>'
            f'<text x="{x}" y="{height - 24 - h}">{count}</text>'
        )
    return (f'<svg id="scores" role="img" aria-label="score distribution" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}">{"".join(rects)}</svg>')
