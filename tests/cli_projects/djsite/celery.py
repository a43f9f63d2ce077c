"""Like a Django project's ``celery.py``: using the app registry at import needs setup()."""

import os

from django.apps import apps
from django.conf import settings

from aioqueue import AioQueue

apps.check_apps_ready()  # fails unless django.setup() ran first

app = AioQueue("djsite", broker=os.environ["CLI_REDIS_URL"])


@app.task(name="djsite.greeting")
async def greeting() -> str:
    return str(settings.GREETING)
