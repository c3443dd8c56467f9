from typing import Any

from django.apps import AppConfig
from django.core.signals import setting_changed


def _settings_changed(setting: str, **kwargs: Any) -> None:
    if setting == "AUDIT":
        from . import checkpoints

        checkpoints.signing_key.cache_clear()


class AuditConfig(AppConfig):
    name = "audit"

    def ready(self) -> None:
        setting_changed.connect(_settings_changed)
