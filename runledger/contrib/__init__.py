"""Integrations with web frameworks: ``runledger.contrib.flask`` and ``.django``."""
