"""A Celery-style project: the app lives in ``proj/celery.py``, its tasks in ``proj/tasks.py``."""
