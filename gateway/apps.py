from django.apps import AppConfig


class GatewayConfig(AppConfig):
    name = "gateway"
    verbose_name = "MCP gateway"

    def ready(self) -> None:
        from . import admission

        admission.connect_signals()
