"""Showing untrusted text: bidirectional controls and other invisible format characters made visible.

A right-to-left override turns "\u202egpj.exe" into what reads as "exe.jpg". Code review tools
show such characters as marks instead of obeying them; so do the admin and the rating page
(static/annotate/dom.js has the same list).
"""

from __future__ import annotations

import re
import unicodedata

from django import template
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

register = template.Library()

# LRE RLE PDF LRO RLO, LRI RLI FSI PDI, LRM RLM, ALM.
INVISIBLE = re.compile("[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")


def _badge(match: re.Match) -> str:
    char = match.group()
    name = unicodedata.name(char, "format character").lower()
    return f'<span class="invisible-char" title="{name}">⟪U+{ord(char):04X}⟫</span>'


def has_invisible(text: str | None) -> bool:
    return bool(text) and INVISIBLE.search(text) is not None


@register.filter
def mark_invisible(text: str | None) -> SafeString:
    """The text escaped, then each invisible format character replaced by a visible ⟪U+XXXX⟫ mark."""
    # Escaping first: the marks are the only markup in the result.
    return mark_safe(INVISIBLE.sub(_badge, escape(text or "")))


def _markdown():
    from markdown_it import MarkdownIt

    # CommonMark without raw HTML (it is escaped, not passed through) and without images (no
    # requests to other hosts from the rating page); links only to the web or to an address.
    md = MarkdownIt("commonmark", {"html": False}).disable("image")
    md.validateLink = lambda url: url.strip().lower().startswith(("http://", "https://", "mailto:"))
    return md


@register.filter
def markdown(text: str | None) -> SafeString:
    """Guidelines written in Markdown, rendered to a safe subset of HTML."""
    return mark_safe(_markdown().render(text or ""))
