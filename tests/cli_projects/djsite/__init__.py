"""A minimal Django project whose aioqueue app needs Django set up before it is imported."""
