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
