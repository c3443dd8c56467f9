from django.db import migrations

FORWARD = [
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    # Serves the audit browser's free-text tool filter (target ILIKE '%...%').
    "CREATE INDEX IF NOT EXISTS audit_target_trgm ON audit_auditrecord "
    "USING gin (target gin_trgm_ops)",
]
REVERSE = ["DROP INDEX IF EXISTS audit_target_trgm"]


def forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for statement in FORWARD:
            schema_editor.execute(statement)


def reverse(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for statement in REVERSE:
            schema_editor.execute(statement)


class Migration(migrations.Migration):
    dependencies = [("audit", "0003_siemsink")]
    operations = [migrations.RunPython(forward, reverse)]
