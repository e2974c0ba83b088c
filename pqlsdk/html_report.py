"""One self-contained HTML page for people: the funnel chart, conversions, rule outcomes and
the distribution of scores. No script, no network, no CDN: inline CSS and SVG only."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from html import escape
from typing import Any

from .reports import Funnel, RuleOutcome, format_lead_time, format_timespan

BAR = "#2f6fdf"
SCORE_BAR = "#18a36b"
#: The 95% interval of a rule's precision, and the lead-time histogram's bars.
INTERVAL = "#d9822b"
LEAD_BAR = "#8a4fd8"
_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 32px; color: #1d2330; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.meta { color: #667; } table { border-collapse: collapse; }
th, td { padding: 4px 12px; border-bottom: 1px solid #e3e6ee; text-align: right; }
th:first-child, td:first-child { text-align: left; } th { background: #f4f6fa; }
svg text { font: 13px system-ui, sans-serif; fill: #1d2330; }
"""


def render(funnel: Funnel, outcomes: Sequence[RuleOutcome], scores: Sequence[float] | None,
           *, title: str = "pqlsdk report", generated: datetime | None = None,
           backtest: Any = None, suggestions: Sequence[Any] | None = None) -> str:
    """The report page as a string; with a :class:`~pqlsdk.Backtest` (and suggestions),
    also which rules are true."""
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
    if backtest is not None:
        parts += backtest_sections(backtest, suggestions or ())
    parts.append("</body></html>")
    return "\n".join(parts)


def render_backtest(backtest: Any, suggestions: Sequence[Any], *,
                    title: str = "pqlsdk backtest", generated: datetime | None = None) -> str:
    """A page of its own for a backtest and its suggestions."""
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="meta">{backtest.subject_type}s'
        + (f" · generated {generated:%Y-%m-%d %H:%M} UTC" if generated else "") + "</p>",
        *backtest_sections(backtest, suggestions),
        "</body></html>",
    ]
    return "\n".join(parts)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def backtest_sections(result: Any, suggestions: Sequence[Any]) -> list[str]:
    """The backtest's headings, chart and tables."""
    outcome = result.outcome if isinstance(result.outcome, str) else (
        f"event {result.outcome['event']}")
    rules = [*result.rules, *result.baseline]
    parts = [
        "<h2>Which rules are true</h2>",
        f'<p class="meta">Outcome: {escape(outcome)} within '
        f"{format_timespan(result.horizon)} of qualifying. {result.subjects} "
        f"{result.subject_type}s, {result.converters} converted (base rate "
        f"{_pct(result.base_rate)}); {result.pending} still inside the horizon, not "
        "counted. Each bar is a rule's precision with its 95% interval; the dashed line is "
        "the base rate: a rule whose bar lies right of it finds converters better than "
        "chance.</p>",
        _precision_chart(rules, result.base_rate),
        _backtest_table(rules),
        "<h2>Lead time</h2>",
        '<p class="meta">Days from qualification to conversion, for the converters the '
        "rules caught (all rules together).</p>",
        _lead_times([t.total_seconds() / 86400 for r in rules for t in r.lead_times]),
    ]
    if result.baseline:
        for title, pairs in (("Added", result.added), ("Dropped", result.dropped)):
            parts.append(f"<h2>{title} ({len(pairs)}, "
                         f"{sum(1 for _, c in pairs if c)} converted)</h2>")
            parts.append(f'<table id="{title.lower()}"><tr><th>subject</th>'
                         "<th>converted</th></tr>" + "".join(
                             f"<tr><td>{escape(str(s))}</td><td>{'yes' if c else 'no'}</td>"
                             f"</tr>" for s, c in pairs) + "</table>")
    parts.append("<h2>Suggested rules</h2>")
    if not suggestions:
        parts.append("<p>No candidate qualified enough subjects.</p>")
    else:
        head = ("<tr><th>rule</th><th>qualified</th><th>converted</th><th>precision</th>"
                "<th>recall</th><th>lift</th><th>TOML</th></tr>")
        body = "".join(
            f"<tr><td>{escape(g.rule.name)}</td><td>{g.qualified}</td><td>{g.converted}</td>"
            f"<td>{_pct(g.precision)}</td><td>{_pct(g.recall)}</td>"
            f"<td>{'-' if g.lift is None else f'{g.lift:.2f}x'}</td>"
            f'<td style="text-align:left"><pre>{escape(g.toml)}</pre></td></tr>'
            for g in suggestions)
        parts.append(f'<table id="suggestions">{head}{body}</table>')
    return parts


def _backtest_table(rules: Sequence[Any]) -> str:
    head = ("<tr><th>rule</th><th>version</th><th>qualified</th><th>converted</th>"
            "<th>precision</th><th>95% interval</th><th>recall</th><th>lift</th>"
            "<th>median lead time</th><th>missed</th><th>pending</th><th>late</th></tr>")
    body = "".join(
        f"<tr><td>{escape(r.rule)}{' (shadow)' if r.shadow else ''}"
        f"{' ⚠ leaky' if r.leaky else ''}</td><td>{r.version}</td><td>{r.qualified}</td>"
        f"<td>{r.converted}</td><td>{_pct(r.precision)}</td>"
        f"<td>{_interval(r)}</td><td>{_pct(r.recall)}</td>"
        f"<td>{'-' if r.lift is None else f'{r.lift:.2f}x'}</td>"
        f"<td>{format_lead_time(r.median_lead_time)}</td><td>{r.missed}</td>"
        f"<td>{r.pending}</td><td>{r.late}</td></tr>"
        for r in rules)
    return f'<table id="backtest">{head}{body}</table>'


def _interval(r: Any) -> str:
    if r.precision is None:
        return "-"
    return f"{_pct(r.precision_low)} to {_pct(r.precision_high)}"


def _precision_chart(rules: Sequence[Any], base_rate: float | None) -> str:
    width, row, label = 640, 28, 200
    span = width - label - 20
    shown = [r for r in rules if r.precision is not None]
    if not shown:
        return "<p>No rule qualified a subject whose outcome is known.</p>"
    items = []
    for i, r in enumerate(shown):
        y = i * row
        x0 = label + round(span * r.precision_low)
        x1 = label + round(span * r.precision_high)
        dot = label + round(span * r.precision)
        items.append(
            f'<text x="0" y="{y + 18}">{escape(r.rule[:26])}</text>'
            f'<rect class="interval" data-rule="{escape(r.rule)}" x="{x0}" y="{y + 8}" '
            f'width="{max(2, x1 - x0)}" height="12" fill="{INTERVAL}"/>'
            f'<rect x="{dot - 2}" y="{y + 4}" width="4" height="20" fill="#1d2330"/>'
        )
    height = row * len(shown) + 20
    if base_rate is not None:
        x = label + round(span * base_rate)
        items.append(f'<line class="base-rate" x1="{x}" y1="0" x2="{x}" y2="{height - 16}" '
                     f'stroke="#1d2330" stroke-dasharray="4 3"/>'
                     f'<text x="{x + 4}" y="{height - 2}">base rate {_pct(base_rate)}</text>')
    return (f'<svg id="precision" role="img" aria-label="precision by rule" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}">{"".join(items)}</svg>')


def _lead_times(days: Sequence[float], buckets: int = 10) -> str:
    if not days:
        return "<p>No rule caught a converter before it converted.</p>"
    return _histogram(days, buckets, svg_id="lead-times", css="lead-bar", color=LEAD_BAR,
                      label="lead time in days", fmt=".3g")


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
    head = ("<tr><th>rule</th><th>qualified</th><th>firings</th><th>sql</th>"
            "<th>opportunity</th><th>customer</th><th>unqualified</th><th>disqualified</th>"
            "<th>top reasons</th></tr>")
    body = "".join(
        f"<tr><td>{escape(o.rule)}{' (shadow)' if o.shadow else ''}</td>"
        f"<td>{o.qualified}</td><td>{o.firings}</td><td>{o.reached['sql']}</td>"
        f"<td>{o.reached['opportunity']}</td><td>{o.reached['customer']}</td>"
        f"<td>{o.rejected['unqualified']}</td><td>{o.rejected['disqualified']}</td>"
        f"<td>{escape('; '.join(f'{r} ({n})' for r, n in o.top_reasons))}</td></tr>"
        for o in outcomes
    )
    return f'<table id="rules">{head}{body}</table>'


def _histogram(scores: Sequence[float], buckets: int = 10, *, svg_id: str = "scores",
               css: str = "score-bar", color: str = SCORE_BAR,
               label: str = "score distribution", fmt: str = "g") -> str:
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
            f'<rect class="{css}" x="{x}" y="{height - 20 - h}" width="{round(bar)}" '
            f'height="{h}" fill="{color}"/>'
            f'<text x="{x}" y="{height - 4}">{format(low + i * step, fmt)}</text>'
            f'<text x="{x}" y="{height - 24 - h}">{count}</text>'
        )
    return (f'<svg id="{svg_id}" role="img" aria-label="{label}" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}">{"".join(rects)}</svg>')
