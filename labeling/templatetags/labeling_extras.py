from django import template
from django.utils.safestring import mark_safe

from ..rendering import render_markdown

register = template.Library()


@register.filter(name="markdown")
def markdown_filter(text: str) -> str:
    """Render untrusted markdown; the output is sanitized by labeling.rendering."""
    return mark_safe(render_markdown(text))  # noqa: S308 - sanitized by nh3 just above


@register.filter(name="letter")
def letter(index: int) -> str:
    return "ABCDEFGH"[index]
