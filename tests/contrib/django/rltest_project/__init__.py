"""The Django project the integration tests run, in-process and as ``manage.py`` subprocesses."""
