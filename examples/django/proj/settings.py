"""Settings of the example project: the minimum for the demo app, on SQLite."""

import os
from pathlib import Path

import django

from aioqueue import crontab

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-a-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "0") == "1"
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]

INSTALLED_APPS = ["django.contrib.contenttypes", "demo"]
if django.VERSION < (6, 0):
    INSTALLED_APPS.append("django_tasks")  # the backport of Django 6's django.tasks

MIDDLEWARE: list[str] = []
ROOT_URLCONF = "proj.urls"
WSGI_APPLICATION = "proj.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_DB_PATH", str(BASE_DIR / "db.sqlite3")),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"

# -- aioqueue, configured as Celery is: CELERY_* settings (proj/celery.py reads them) --------
CELERY_BROKER_URL = os.environ.get("AIOQUEUE_BROKER", "redis://localhost:6379/0")
CELERY_RESULT_EXPIRES = 3600
CELERY_TIMEZONE = TIME_ZONE
CELERY_BEAT_SCHEDULE = {
    "expire-unconfirmed-orders": {
        "task": "demo.tasks.expire_unconfirmed_orders",
        "schedule": crontab(minute="*/5"),
        "kwargs": {"older_than_s": 3600},
    },
}

# -- Django's Tasks framework (django.tasks), run by the aioqueue workers ----------------------
TASKS = {
    "default": {
        "BACKEND": "aioqueue.contrib.django.TasksBackend",
        "OPTIONS": {"app": "proj.celery:app"},
    }
}
