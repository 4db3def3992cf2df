import html

from django import template
from django.utils.html import strip_tags
from django.utils.safestring import mark_safe
from django.utils.text import Truncator

from ..rendering import render_markdown

register = template.Library()


@register.filter(name="markdown")
def markdown_filter(text: str) -> str:
    """Render untrusted markdown; the output is sanitized by labeling.rendering."""
    return mark_safe(render_markdown(text))  # noqa: S308 - sanitized by nh3 just above


@register.filter(name="letter")
def letter(index: int) -> str:
    return "ABCDEFGH"[index]


@register.filter(name="plain_summary")
def plain_summary(text: str, length: int = 220) -> str:
    """The first paragraph of a markdown text as plain text (escaped again on output)."""
    first = (text or "").strip().split("\n\n")[0]
    plain = html.unescape(strip_tags(render_markdown(first))).strip()
    return Truncator(" ".join(plain.split())).chars(length)


@register.filter
def duration(value) -> str:
    """A timedelta in words: "15 minutes", "1 hour", "90 seconds"."""
    seconds = int(value.total_seconds()) if hasattr(value, "total_seconds") else int(value or 0)
    for unit, size in (("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"


@register.filter
def pvalue(value) -> str:
    """A p-value as people read it: "< 0.001" below that, three decimals otherwise."""
    if value is None:
        return "–"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"
