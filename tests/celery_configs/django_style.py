"""A Django ``settings.py`` of a project on Celery: read with ``namespace="CELERY"``.

``app.config_from_object("tests.celery_configs.django_style", namespace="CELERY")`` reads the
``CELERY_``-prefixed names only (Django's own settings are left alone) and, as Celery does,
takes the timezone from Django's ``TIME_ZONE`` when ``CELERY_TIMEZONE`` is not set. The broker
is the test's Redis: the test sets ``CELERY_CONFIG_TEST_BROKER`` before importing this module.
"""

import os

from aioqueue import crontab

DEBUG = True
SECRET_KEY = "not-a-secret"
INSTALLED_APPS = ["django.contrib.contenttypes", "orders"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
TIME_ZONE = "Asia/Shanghai"
USE_TZ = True

CELERY_BROKER_URL = os.environ["CELERY_CONFIG_TEST_BROKER"]
CELERY_RESULT_BACKEND = CELERY_BROKER_URL
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_RESULT_EXPIRES = 600
CELERY_RESULT_EXTENDED = True
CELERY_TASK_TRACK_STARTED = True
CELERY_TASK_TIME_LIMIT = 30 * 60
CELERY_TASK_DEFAULT_QUEUE = "django"
CELERY_TASK_ROUTES = {"orders.tasks.*": {"queue": "orders"}}
CELERY_WORKER_CONCURRENCY = 4
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_BEAT_SCHEDULE = {
    "expire-unconfirmed-orders": {
        "task": "orders.tasks.expire_unconfirmed",
        "schedule": crontab(minute="*/5"),
        "kwargs": {"older_than_s": 3600},
    },
}
