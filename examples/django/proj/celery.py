"""The aioqueue app of this project: Celery's ``proj/celery.py``, with one import changed.

Run a worker with ``aioqueue worker proj.celery:app -l info`` from ``examples/django``.
"""

import os

from aioqueue import AioQueue

# Django settings for the worker (the web process sets them itself, in manage.py).
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")

app = AioQueue("proj")

# Every setting named CELERY_* in Django's settings, without the prefix, in lower case:
# CELERY_BROKER_URL -> broker_url, CELERY_BEAT_SCHEDULE -> beat_schedule.
app.config_from_object("django.conf:settings", namespace="CELERY")

# Import demo/tasks.py (and the tasks module of every other installed app).
app.autodiscover_tasks()
