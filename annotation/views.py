"""Server-rendered pages for raters and curators."""

from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import get_object_or_404, render
from django.urls import reverse

from annotation import selectors
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
