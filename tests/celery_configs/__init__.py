"""Celery configuration files as Celery projects write them, read by test_celery_config.py."""
