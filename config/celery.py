import os

from celery import Celery
from celery.signals import worker_init, worker_process_init, worker_ready

from config.priority import enter_background_cgroup, lower_autogroup

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


@worker_init.connect
def lower_the_priority_of_background_workers(sender, **_kwargs) -> None:
    """A worker consuming REFINERY_BACKGROUND_QUEUE alone (`celery -A config worker -Q background`)
    takes the nice value REFINERY_BACKGROUND_NICE: the web processes on its machine come first.

    Here rather than in `nice -n 10 celery …`: whatever starts the worker (compose, systemd, a
    bench), the queue it consumes decides, and one consuming other queues too keeps its priority
    (the loop's steps there must not starve behind the web). `worker_init` runs in the main process
    after the queues are chosen and before the pool starts: the pool's processes inherit the value
    (on Linux a nice value is per thread, and new threads and processes take their parent's).
    A nice value can only go up without privileges, so one already higher is kept.

    Where the kernel groups processes by session for scheduling (Linux's autogroups, on by default),
    a nice value only ranks a process among those of its own session: a worker started in a session
    of its own would still take an equal share of the CPU from the web server's session. Such a
    worker, leading its session, therefore gives its whole group the same nice value. One that shares
    a session with other programs leaves the group alone. (Under systemd or in a container the
    service's cgroup decides the share: give it a lower CPUWeight or cpu_shares.) Where it may, the
    worker also moves into the idle cgroup BACKGROUND_CGROUP, which lets a waking web process have a
    core at once (config.priority).
    """
    from django.conf import settings

    queues = set(sender.app.amqp.queues.consume_from or ())
    if not queues or not queues <= {settings.REFINERY_BACKGROUND_QUEUE}:
        return
    if os.getpriority(os.PRIO_PROCESS, 0) < settings.REFINERY_BACKGROUND_NICE:
        os.setpriority(os.PRIO_PROCESS, 0, settings.REFINERY_BACKGROUND_NICE)
    if os.getsid(0) == os.getpid():
        lower_autogroup(settings.REFINERY_BACKGROUND_NICE)
    enter_background_cgroup(settings.BACKGROUND_CGROUP)
