"""A ``celeryconfig.py`` in Celery 3's uppercase names, as Celery's documentation shows them.

Read with ``app.config_from_object("tests.celery_configs.old_style")``. One line differs from
a Celery project's: ``crontab`` comes from aioqueue instead of ``celery.schedules`` (a Celery
crontab object is converted too, when Celery is installed). The broker is the test's Redis:
the test sets ``CELERY_CONFIG_TEST_BROKER`` before importing this module.
"""

import os
from datetime import timedelta

from aioqueue import crontab

BROKER_URL = os.environ["CELERY_CONFIG_TEST_BROKER"]
CELERY_RESULT_BACKEND = BROKER_URL  # results next to the queues (the only choice today)

CELERY_TIMEZONE = "Asia/Shanghai"
CELERY_ENABLE_UTC = True
CELERY_TASK_RESULT_EXPIRES = 3600

CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]

CELERYD_CONCURRENCY = 8
CELERYD_PREFETCH_MULTIPLIER = 1
CELERY_ACKS_LATE = True
CELERYD_TASK_TIME_LIMIT = 60

CELERY_DEFAULT_QUEUE = "celery"
CELERY_ROUTES = {
    "tasks.add": {"queue": "math"},
    "feed.tasks.*": {"queue": "feeds"},
}
CELERY_ANNOTATIONS = {"tasks.add": {"rate_limit": "10/s", "max_retries": 1}}

CELERYBEAT_SCHEDULE = {
    "add-every-30-seconds": {
        "task": "tasks.add",
        "schedule": timedelta(seconds=30),
        "args": (16, 16),
    },
    "report-at-10-and-17": {
        "task": "tasks.report",
        "schedule": crontab(hour="10, 17", minute="0"),
    },
}
