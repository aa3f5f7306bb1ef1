"""The commands ``manage.py`` finds: ``runledger_worker`` and ``runledger_migrate``."""
