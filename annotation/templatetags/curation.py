"""The curator pages' number formatting (statistics are often undefined, and say so) and the raters table."""

from html import escape

from django import template
from django.urls import reverse
from django.utils.safestring import SafeString, mark_safe

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


@register.simple_tag(takes_context=True)
def member_rows(context, rows) -> SafeString:
    """The raters page's table rows (annotation.quality.RaterStats, `rows`), made in Python.

    Through the template language a page of a hundred members was 20-40 ms of the web process's
    CPU, each row's forms rendering a CSRF token and reversing a URL: a curator reloading the page
    held up the raters' requests waiting for that process. Here one token serves every form and a
    page is a few milliseconds. Every value from the database is escaped.
    """
    project, user, computing = context["project"], context["user"], context["freshness"].as_of is None
    token = escape(str(context.get("csrf_token", "")))
    csrf = f'<input type="hidden" name="csrfmiddlewaretoken" value="{token}">'
    add_url = escape(reverse("curation-member-add", args=[project.pk]))
    # Reversed once: the member's id is the URL's last number.
    before, after = map(escape, reverse("curation-member-deactivate", args=[project.pk, 1]).rsplit("/1/", 1))
    out = []
    for row in rows:
        name, role = escape(row.username), escape(row.role or "")
        inactive = "" if row.is_active else ' class="inactive"'
        note = "" if row.is_active else " <small>(inactive)</small>"
        out.append(
            f'<tr data-rater="{name}"{inactive}><th scope="row">{name}{note}</th><td>{role or "—"}</td>'
        )
        if computing:
            out.append('<td colspan="5" class="note">computing…</td>')
        else:
            median = "—" if row.median_seconds is None else f"{row.median_seconds:.1f} s"
            gold = f" <small>({row.gold_passed}/{row.gold_checks})</small>" if row.gold_checks else ""
            shared = f" <small>({row.matching_items}/{row.shared_items})</small>" if row.shared_items else ""
            out.append(
                f'<td class="num" data-stat="judgments">{int(row.judgments)}</td>'
                f'<td class="num" data-stat="median_seconds">{median}</td>'
                f'<td class="num" data-stat="gold_accuracy">{percent(row.gold_accuracy)}{gold}</td>'
                f'<td class="num" data-stat="agreement">{percent(row.agreement)}{shared}</td>'
                f'<td class="num" data-stat="mean_kappa">{stat(row.mean_kappa, 2)}</td>'
            )
        out.append('<td class="actions">')
        if row.is_active and row.user_id != user.pk:
            url = f"{before}/{int(row.user_id)}/{after}"
            out.append(
                f'<details><summary>Deactivate…</summary><form method="post" action="{url}" class="deactivate">'
                f'{csrf}<label class="check"><input type="checkbox" name="exclude_judgments">'
                " Also exclude their judgments from training</label>"
                '<input type="text" name="reason" required maxlength="2000"'
                ' placeholder="Reason (goes in the audit log)" aria-label="Reason">'
                f'<button type="submit" class="danger">Deactivate {name}</button></form></details>'
            )
        elif not row.is_active and row.role:
            out.append(
                f'<form method="post" action="{add_url}">{csrf}'
                f'<input type="hidden" name="username" value="{name}">'
                f'<input type="hidden" name="role" value="{role}">'
                '<button type="submit" class="link">Reactivate</button></form>'
            )
        out.append("</td></tr>\n")
    return mark_safe("".join(out))  # every value above is escaped
