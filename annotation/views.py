"""Server-rendered pages for raters and curators."""

from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from annotation import selectors
from annotation.models import Membership


@login_required
def home(request):
    memberships = Membership.objects.filter(user=request.user, is_active=True).select_related("project")
    rows = [
        {
            "project": m.project,
            "role": m.get_role_display(),
            "progress": selectors.project_progress(m.project, rater=request.user),
        }
        for m in memberships.order_by("project__name")
    ]
    return render(request, "home.html", {"rows": rows})
