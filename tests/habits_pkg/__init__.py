"""A reusable app (as a Django app would be): its tasks use ``@shared_task``."""
