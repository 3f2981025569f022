"""The test suite's settings: the real ones, with a throwaway key and nothing that needs a build step.

Tests run without DEBUG, like a deployment; settings refuse to start that way without a
SECRET_KEY, so the suite brings its own (tests that start the app in a subprocess pass theirs).
"""

import os

os.environ.setdefault("SECRET_KEY", "test-suite-only-key-" + "x" * 40)
# The suite's niced processes (export children, workers, their backends) get an idle cgroup of their
# own where the machine lets them (config.priority), set in the environment for the processes the
# tests start; tests/conftest.py removes it at the end.
os.environ.setdefault("BACKGROUND_CGROUP", "refinery-background-tests")

from config.settings import *  # noqa: F403
from config.settings import REST_FRAMEWORK, STORAGES

# pytest-django's live server serves static files from the source folders by their plain
# names; hashed names exist only after collectstatic (tests/browser/test_debug_off.py runs it).
STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}
# The suite reuses user ids within one process; the API limits are tested on their own.
REST_FRAMEWORK = {
    **REST_FRAMEWORK,
    "DEFAULT_THROTTLE_RATES": {"anon": "1000000/min", "user": "1000000/min", "next_task": "1000000/min"},
}
