"""A test app: handlers in ``jobs.py`` (found by autodiscovery) and ``django.tasks`` functions
in ``tasks.py``."""
