"""Changes to masking rules notify the gateway processes' change channel (`mcpgw_cache`,
see approvals/migrations/0002_cache_notifications.py), so that every process drops the
rules it read at once. SQLite has no notifications: nothing is installed there."""

from django.db import migrations

TRIGGER = """
CREATE TRIGGER mcpgw_cache_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON masking_maskingrule FOR EACH STATEMENT EXECUTE FUNCTION mcpgw_cache_changed();
"""


def install(apps, schema_editor):  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(TRIGGER)


def uninstall(apps, schema_editor):  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP TRIGGER IF EXISTS mcpgw_cache_changed ON masking_maskingrule;")


class Migration(migrations.Migration):
    dependencies = [
        ("masking", "0002_default_rules"),
        ("approvals", "0002_cache_notifications"),
    ]

    operations = [migrations.RunPython(install, uninstall)]
