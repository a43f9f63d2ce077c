# As in Celery's Django guide: load the task app whenever Django starts, so that
# @shared_task tasks are bound to it.
from .celery import app as celery_app

__all__ = ("celery_app",)
