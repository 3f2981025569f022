"""Number formatting for the curator pages: statistics are often undefined, and say so."""

from django import template

register = template.Library()


@register.filter
def stat(value, digits: int = 3) -> str:
    """A statistic to `digits` decimals, or an em dash when it is undefined (None)."""
    if value is None:
        return "—"
    return f"{value:.{int(digits)}f}"


@register.filter
def percent(value, digits: int = 0) -> str:
    """A fraction as a percentage, or an em dash when it is undefined (None)."""
    if value is None:
        return "—"
    return f"{100 * value:.{int(digits)}f}%"
