"""The embedded default's stand-in for Celery beat.

With no REDIS_URL there is no beat process, so the ASGI process itself runs the beat
schedule's tasks in a daemon thread. In production (REDIS_URL set) this does nothing.
"""

import logging
import threading
import time

from celery import current_app
from django.conf import settings
from django.db import close_old_connections

log = logging.getLogger(__name__)
_started = threading.Event()


def start() -> None:
    if not settings.CELERY_TASK_ALWAYS_EAGER or _started.is_set():
        return
    _started.set()
    threading.Thread(target=_run, name="embedded-beat", daemon=True).start()


def _run() -> None:
    # Celery finds the apps' tasks modules on this call (autodiscovery is lazy).
    current_app.loader.import_default_modules()
    schedule = {
        name: (entry["task"], float(entry["schedule"]))
        for name, entry in settings.CELERY_BEAT_SCHEDULE.items()
    }
    due = {name: time.monotonic() + interval for name, (_task, interval) in schedule.items()}
    while True:
        time.sleep(1)
        for name, (task, interval) in schedule.items():
            if time.monotonic() < due[name]:
                continue
            due[name] = time.monotonic() + interval
            try:
                current_app.tasks[task].apply()
            except Exception:
                log.exception("periodic task %s failed", task)
            finally:
                close_old_connections()
