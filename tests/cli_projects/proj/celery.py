"""``aioqueue -A proj`` finds this module's ``app`` as ``celery -A proj`` would."""

import os

from aioqueue import AioQueue

app = AioQueue("proj", broker=os.environ["CLI_REDIS_URL"], include=["proj.tasks"],
               shutdown_timeout=5)
