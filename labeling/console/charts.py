"""Server-drawn SVG charts: axes with "nice" ticks, labels that never overlap.

Drawn in Python (no chart library, no script) so that the page works without JS and the
geometry is testable. Only numbers and dates go into the markup, and format_html escapes
them anyway.
"""

from __future__ import annotations

import math
from datetime import date, timedelta

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe


def nice_ticks(high: float, count: int = 5) -> list[float]:
    """0 .. a round number >= high, in steps of 1, 2 or 5 times a power of ten."""
    if high <= 0:
        return [0, 1]
    raw = high / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    if step < 1:  # counts: whole numbers only
        step = 1
    top = math.ceil(high / step) * step
    return [i * step for i in range(int(round(top / step)) + 1)]


def day_series(counts: dict[date, int], *, last_day: date, days: int) -> list[tuple[date, int]]:
    """Every day of the window, in order, with 0 where nothing was counted."""
    first = last_day - timedelta(days=days - 1)
    return [(first + timedelta(days=i), counts.get(first + timedelta(days=i), 0)) for i in range(days)]


def bar_chart(series: list[tuple[date, int]], *, title: str, y_label: str, width: int = 720, height: int = 240) -> SafeString:
    """One bar per day, a y axis with ticks and grid lines, a dated x axis."""
    left, right, top, bottom = 48, 12, 14, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    ticks = nice_ticks(max((n for _, n in series), default=0))
    y_top = ticks[-1]

    def y(value: float) -> float:
        return top + plot_h - (value / y_top) * plot_h

    slot = plot_w / max(len(series), 1)
    bar_w = max(1.0, slot * 0.7)
    parts = [
        format_html('<line class="grid" x1="{}" x2="{}" y1="{}" y2="{}"/>', left, width - right, round(y(t), 1), round(y(t), 1))
        for t in ticks
    ]
    parts += [
        format_html('<text class="tick" x="{}" y="{}" text-anchor="end" dominant-baseline="middle">{}</text>', left - 6, round(y(t), 1), f"{t:g}")
        for t in ticks
    ]
    label_every = max(1, math.ceil(len(series) / 8))  # at most ~8 date labels: never overlapping
    for i, (day, n) in enumerate(series):
        x = left + i * slot + (slot - bar_w) / 2
        parts.append(
            format_html(
                '<rect class="bar" x="{}" y="{}" width="{}" height="{}"><title>{}: {}</title></rect>',
                round(x, 1), round(y(n), 1), round(bar_w, 1), round(top + plot_h - y(n), 1), day.isoformat(), n,
            )
        )
        if i % label_every == 0:
            parts.append(
                format_html(
                    '<text class="tick" x="{}" y="{}" text-anchor="middle">{}</text>',
                    round(left + i * slot + slot / 2, 1), top + plot_h + 16, day.strftime("%b %-d"),
                )
            )
    axes = format_html(
        '<path class="axis" d="M{} {} V{} H{}"/>', left, top, top + plot_h, width - right
    )
    titles = format_html(
        '<text class="axis-title" x="{}" y="{}" text-anchor="middle">day</text>'
        '<text class="axis-title" transform="translate(12 {}) rotate(-90)" text-anchor="middle">{}</text>',
        left + plot_w / 2, height - 6, top + plot_h / 2, y_label,
    )
    body = format_html_join("", "{}", ((part,) for part in parts))
    return format_html(
        '<svg class="chart" viewBox="0 0 {} {}" role="img" aria-label="{}">{}{}{}</svg>',
        width, height, title, body, axes, titles,
    ) if series else mark_safe('<p class="muted">No data yet.</p>')


def interval_chart(
    points: list[tuple[str, float | None, float | None, float | None]], *, title: str, y_label: str, x_label: str,
    y_min: float = 0.0, y_max: float = 1.0, width: int = 720, height: int = 240, reference: float | None = None,
) -> SafeString:
    """A value per period with its interval (x: period labels, y: fixed range): a line through
    the values, a vertical bar for each interval, ticks every 0.2, an optional dashed reference line."""
    usable = [(label, v, lo, hi) for label, v, lo, hi in points if v is not None]
    if not usable:
        return mark_safe('<p class="muted">Not enough data yet.</p>')
    left, right, top, bottom = 48, 12, 14, 44
    plot_w, plot_h = width - left - right, height - top - bottom

    def y(value: float) -> float:
        value = min(max(value, y_min), y_max)
        return round(top + plot_h - (value - y_min) / (y_max - y_min) * plot_h, 1)

    slot = plot_w / len(usable)

    def x(i: int) -> float:
        return round(left + i * slot + slot / 2, 1)

    step = 0.2 if y_max - y_min <= 1.6 else 0.5
    ticks = [round(k * step, 10) for k in range(math.ceil(y_min / step - 1e-9), math.floor(y_max / step + 1e-9) + 1)]  # multiples of the step
    parts = [format_html('<line class="grid" x1="{}" x2="{}" y1="{}" y2="{}"/>', left, width - right, y(t), y(t)) for t in ticks]
    parts += [
        format_html('<text class="tick" x="{}" y="{}" text-anchor="end" dominant-baseline="middle">{}</text>', left - 6, y(t), f"{t:g}")
        for t in ticks
    ]
    if reference is not None:
        parts.append(format_html('<line class="reference" x1="{}" x2="{}" y1="{}" y2="{}"/>', left, width - right, y(reference), y(reference)))
    label_every = max(1, math.ceil(len(usable) / 8))
    for i, (label, value, low, high) in enumerate(usable):
        if low is not None and high is not None:
            parts.append(format_html('<line class="interval" x1="{}" x2="{}" y1="{}" y2="{}"/>', x(i), x(i), y(low), y(high)))
        parts.append(format_html('<circle class="point" cx="{}" cy="{}" r="3.5"><title>{}: {}</title></circle>', x(i), y(value), label, f"{value:.3f}"))
        if i % label_every == 0:
            parts.append(format_html('<text class="tick" x="{}" y="{}" text-anchor="middle">{}</text>', x(i), top + plot_h + 16, label))
    line = " ".join(f"{x(i)},{y(v)}" for i, (_, v, _, _) in enumerate(usable))
    body = format_html_join("", "{}", ((part,) for part in parts))
    return format_html(
        '<svg class="chart" viewBox="0 0 {} {}" role="img" aria-label="{}">{}<polyline class="series" points="{}"/>'
        '<path class="axis" d="M{} {} V{} H{}"/>'
        '<text class="axis-title" x="{}" y="{}" text-anchor="middle">{}</text>'
        '<text class="axis-title" transform="translate(12 {}) rotate(-90)" text-anchor="middle">{}</text></svg>',
        width, height, title, body, line, left, top, top + plot_h, width - right,
        left + plot_w / 2, height - 6, x_label, top + plot_h / 2, y_label,
    )
