"""Django management commands: ``runledger_worker`` and ``runledger_migrate``."""
