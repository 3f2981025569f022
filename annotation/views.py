"""Server-rendered pages for raters and curators."""

import sys

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse

from annotation import selectors
from annotation.api import errors as api_errors
from annotation.models import Membership


@login_required
def home(request):
    memberships = list(
        Membership.objects.filter(user=request.user, is_active=True)
        .select_related("project")
        .order_by("project__name")
    )
    progress = selectors.projects_progress([m.project for m in memberships], rater=request.user)
    rows = [
        {
            "project": m.project,
            "role": m.get_role_display(),
            "curate": m.can_curate,
            "progress": progress[m.project_id],
        }
        for m in memberships
    ]
    return render(request, "home.html", {"rows": rows})


@login_required
def annotate(request, project_id: int):
    """The rating page. Its script pulls tasks from the queue API, one after another."""
    project = get_object_or_404(selectors.project_list_visible(request.user), pk=project_id)
    if selectors.membership_get(request.user, project) is None:
        raise Http404("not a rater of this project")
    config = {
        "project": project.pk,
        "kind": project.kind,
        "nextTaskUrl": reverse("project-next-task", args=[project.pk]),
        "progressUrl": reverse("project-progress", args=[project.pk]),
        "submitUrl": reverse("lease-submit", args=[0]).replace("/0/", "/{id}/"),
        "skipUrl": reverse("lease-skip", args=[0]).replace("/0/", "/{id}/"),
    }
    return render(request, "annotate.html", {"project": project, "config": config})


_PLAIN_PAGE = (
    "<!doctype html><html lang=en><meta charset=utf-8><title>{title}</title>"
    "<h1>{title}</h1><p>{message}</p></html>"
)


def server_error(request):
    """handler500: what escaped a view or a middleware. A database that cannot be reached answers
    503 (Retry-After), a full disk 507, each as JSON under /api/ and as a plain page elsewhere: a
    page that needs nothing from the database, not even the user. Anything else is Django's 500."""
    from django.views.defaults import server_error as django_server_error

    exc = sys.exc_info()[1]
    if api_errors.database_unavailable(exc):
        code, status, message = "database_unavailable", 503, api_errors.DATABASE_UNAVAILABLE
        title, headers = "Service unavailable", {"Retry-After": api_errors.DATABASE_RETRY_AFTER}
    elif api_errors.no_space(exc):
        code, status, message = "no_space", 507, api_errors.NO_SPACE
        title, headers = "Insufficient storage", {}
    else:
        return django_server_error(request)
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": message, "code": code}, status=status, headers=headers)
    page = _PLAIN_PAGE.format(title=title, message=message[0].upper() + message[1:] + ".")
    return HttpResponse(page, status=status, headers=headers, content_type="text/html; charset=utf-8")
