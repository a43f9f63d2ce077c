"""The smallest settings Django accepts."""

SECRET_KEY = "tests-only"
INSTALLED_APPS: list[str] = ["django.contrib.contenttypes"]
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
GREETING = "hello from Django settings"
