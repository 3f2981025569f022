import os

from celery import Celery
from celery.signals import worker_process_init, worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("refinery")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_ready.connect
@worker_process_init.connect
def sweep_sandboxes_at_worker_start(**_kwargs) -> None:
    """A worker killed mid-run leaves its sandbox folder (and maybe a forked process) behind."""
    from feedback_loop.engine.sandbox import sweep_stale_sandboxes

    sweep_stale_sandboxes()
