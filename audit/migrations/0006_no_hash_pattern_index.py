"""The audit records' hash column loses the second index Django makes for a unique text
column on Postgres (`varchar_pattern_ops`, for LIKE 'prefix%' searches, which nothing
makes on record hashes): every record the data path writes updated it, for nothing. The
unique constraint, and its index, stay. Elsewhere (SQLite) there is no such index."""

from django.db import migrations

TABLE = "audit_auditrecord"


def _pattern_indexes(connection) -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() "
            "AND tablename = %s AND indexdef LIKE %s",
            [TABLE, "%(hash varchar_pattern_ops)"],
        )
        return [name for (name,) in cursor.fetchall()]


def forward(apps, schema_editor):
    connection = schema_editor.connection
    if connection.vendor != "postgresql":
        return
    quote = connection.ops.quote_name
    for name in _pattern_indexes(connection):
        schema_editor.execute(f"DROP INDEX {quote(name)}")


def reverse(apps, schema_editor):
    connection = schema_editor.connection
    if connection.vendor != "postgresql" or _pattern_indexes(connection):
        return
    quote = connection.ops.quote_name
    name = schema_editor._create_index_name(TABLE, ["hash"], suffix="_like")
    schema_editor.execute(
        f"CREATE INDEX {quote(name)} ON {quote(TABLE)} (hash varchar_pattern_ops)"
    )


class Migration(migrations.Migration):
    dependencies = [("audit", "0005_lz4_values")]
    operations = [migrations.RunPython(forward, reverse)]
