"""Login throttling on top of django-axes."""

from axes.backends import AxesStandaloneBackend
from axes.helpers import get_cool_off
from django.contrib.auth.forms import AuthenticationForm
from django.shortcuts import render


class LoginAttemptsBackend(AxesStandaloneBackend):
    """Refuses a login for a (username, address) pair that django-axes has locked out.

    Every login over HTTP (the site's, the admin's) passes its request and is counted. A call
    without one (`Client.login()` in tests, a shell) has no address to count against, so it is
    passed on to the next backend instead of failing with axes' "request required" error.
    """

    def authenticate(self, request, username=None, password=None, **kwargs):
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)


def lockout_response(request, original_response=None, credentials=None):
    """The login page again, with the lockout said plainly (429), for the site's and the admin's login."""
    cool_off = get_cool_off(request)
    context = {
        "form": AuthenticationForm(request),
        "locked_out_minutes": max(1, round(cool_off.total_seconds() / 60)) if cool_off else None,
        "next": request.POST.get("next", request.GET.get("next", "")),
    }
    return render(request, "registration/login.html", context, status=429)
