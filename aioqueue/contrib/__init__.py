"""Framework integrations, each imported only by those who use it.

* :mod:`aioqueue.contrib.django` -- ``delay_on_commit``, ``app.autodiscover_tasks()``, the
  worker fix-up (``django.setup()``, ``close_old_connections()`` around each task) and a
  backend for Django's Tasks framework (``django.tasks`` / ``django_tasks``).
* :mod:`aioqueue.contrib.flask` -- ``init_app(aioqueue_app, flask_app)``: every task runs
  inside the Flask app context.
"""
