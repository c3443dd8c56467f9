"""Change notifications for the tool catalog, which gateway processes keep in memory
(gateway/admission.py): any change to a connection's tool definitions notifies the
channel `mcpgw_cache` when its transaction commits. SQLite has no notifications."""

from django.db import migrations

TABLE = "gateway_tooldefinition"


def install(apps, schema_editor):  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(
        f"CREATE TRIGGER mcpgw_cache_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE "
        f"ON {TABLE} FOR EACH STATEMENT EXECUTE FUNCTION mcpgw_cache_changed();"
    )


def uninstall(apps, schema_editor):  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(f"DROP TRIGGER IF EXISTS mcpgw_cache_changed ON {TABLE};")


class Migration(migrations.Migration):
    dependencies = [
        ("gateway", "0005_sse_transport"),
        # It creates the function the trigger runs.
        ("approvals", "0002_cache_notifications"),
    ]

    operations = [migrations.RunPython(install, uninstall)]
