"""The audit trail's JSON values are compressed with lz4 where Postgres has it (PostgreSQL
14 and later built with lz4, as Debian's packages and the official images are): Postgres
compresses a stored 10 KB result in less time than with its default, pglz, and the values
take about a fifth more space. Values written before stay as they are and read as before.
Elsewhere (SQLite, a Postgres without lz4) nothing changes."""

from django.db import migrations

COLUMNS = ("arguments", "result", "masking", "details")


def _has_lz4(connection) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'")
        row = cursor.fetchone()
    return row is not None and "lz4" in (row[0] or [])


def _set(schema_editor, method: str) -> None:
    connection = schema_editor.connection
    if connection.vendor != "postgresql" or not _has_lz4(connection):
        return
    for column in COLUMNS:
        schema_editor.execute(
            f"ALTER TABLE audit_auditrecord ALTER COLUMN {column} SET COMPRESSION {method}"
        )


def forward(apps, schema_editor):
    _set(schema_editor, "lz4")


def reverse(apps, schema_editor):
    _set(schema_editor, "default")


class Migration(migrations.Migration):
    dependencies = [("audit", "0004_target_search")]
    operations = [migrations.RunPython(forward, reverse)]
