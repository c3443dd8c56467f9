from django.apps import AppConfig
from django.db.backends.signals import connection_created


class GatewayConfig(AppConfig):
    name = "gateway"
    verbose_name = "MCP gateway"

    def ready(self) -> None:
        from mcpgw import pg

        from . import admission

        admission.connect_signals()
        connection_created.connect(pg.settle_session, dispatch_uid="mcpgw.settle_session")
