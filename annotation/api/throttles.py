"""Rate limits beyond the API-wide ones (settings.REST_FRAMEWORK's DEFAULT_THROTTLE_RATES)."""

from rest_framework.settings import api_settings
from rest_framework.throttling import UserRateThrottle


class NextTaskRateThrottle(UserRateThrottle):
    """How often one rater may ask for a task, all projects together.

    A rater cannot hold more than their project's `max_pending_per_rater` leases however fast
    they ask (services.leases); this stops a script asking in a loop from costing the queue a
    locked transaction per call. Beyond the rate: 429, with Retry-After in seconds.
    """

    scope = "next_task"


# The API-wide limits still apply to an action that names its own throttles.
NEXT_TASK_THROTTLES = [*api_settings.DEFAULT_THROTTLE_CLASSES, NextTaskRateThrottle]
