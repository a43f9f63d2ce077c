"""Side-by-side benchmark harness: aioqueue vs arq, SAQ, taskiq and Celery (see README.md)."""
