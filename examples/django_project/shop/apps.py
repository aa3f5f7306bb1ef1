"""The shop app's configuration."""

from django.apps import AppConfig


class ShopConfig(AppConfig):
    """Orders and their jobs."""

    name = "shop"
