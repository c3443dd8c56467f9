"""Change notifications for what gateway processes keep in memory (gateway/admission.py).

On Postgres, a change to any table the data path reads to admit a call notifies the
channel `mcpgw_cache` when its transaction commits. Bookkeeping columns that the data
path itself refreshes (a token's last use, a user's last login, a session's last activity)
do not count as changes. SQLite has no notifications: nothing is installed there.
"""

from django.db import migrations

# Tables whose every change matters, and the bookkeeping column of each (if any).
TABLES = {
    "auth_user": "last_login",
    "auth_user_groups": None,
    "gateway_agenttoken": "last_used_at",
    "gateway_connection": None,
    "approvals_connectionpolicy": None,
    "approvals_grant": None,
    "approvals_policyrule": None,
    "approvals_policyrule_groups": None,
}
SESSIONS = "gateway_downstreamsession"

FUNCTIONS = """
CREATE OR REPLACE FUNCTION mcpgw_cache_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('mcpgw_cache', TG_TABLE_NAME);
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION mcpgw_cache_session_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('mcpgw_cache', TG_TABLE_NAME || ':' || OLD.key_digest);
    RETURN NULL;
END $$;
"""


def _table_triggers(table: str, bookkeeping: str | None) -> str:
    if bookkeeping is None:
        return f"""
CREATE TRIGGER mcpgw_cache_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION mcpgw_cache_changed();
"""
    return f"""
CREATE TRIGGER mcpgw_cache_changed AFTER INSERT OR DELETE OR TRUNCATE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION mcpgw_cache_changed();
CREATE TRIGGER mcpgw_cache_updated AFTER UPDATE ON {table} FOR EACH ROW
    WHEN ((to_jsonb(OLD) - '{bookkeeping}') IS DISTINCT FROM (to_jsonb(NEW) - '{bookkeeping}'))
    EXECUTE FUNCTION mcpgw_cache_changed();
"""


SESSION_TRIGGERS = f"""
CREATE TRIGGER mcpgw_cache_changed AFTER TRUNCATE ON {SESSIONS}
    FOR EACH STATEMENT EXECUTE FUNCTION mcpgw_cache_changed();
CREATE TRIGGER mcpgw_cache_updated AFTER UPDATE ON {SESSIONS} FOR EACH ROW
    WHEN ((to_jsonb(OLD) - 'last_seen_at') IS DISTINCT FROM (to_jsonb(NEW) - 'last_seen_at'))
    EXECUTE FUNCTION mcpgw_cache_session_changed();
CREATE TRIGGER mcpgw_cache_deleted AFTER DELETE ON {SESSIONS} FOR EACH ROW
    EXECUTE FUNCTION mcpgw_cache_session_changed();
"""


def install(apps, schema_editor):  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor != "postgresql":
        return
    sql = FUNCTIONS + "".join(_table_triggers(t, b) for t, b in TABLES.items())
    schema_editor.execute(sql + SESSION_TRIGGERS)


def uninstall(apps, schema_editor):  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor != "postgresql":
        return
    statements = [
        f"DROP TRIGGER IF EXISTS {name} ON {table};"
        for table in (*TABLES, SESSIONS)
        for name in ("mcpgw_cache_changed", "mcpgw_cache_updated", "mcpgw_cache_deleted")
    ]
    statements.append("DROP FUNCTION IF EXISTS mcpgw_cache_changed();")
    statements.append("DROP FUNCTION IF EXISTS mcpgw_cache_session_changed();")
    schema_editor.execute("\n".join(statements))


class Migration(migrations.Migration):
    dependencies = [
        ("approvals", "0001_initial"),
        ("gateway", "0004_idp_sessions"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]

    operations = [migrations.RunPython(install, uninstall)]
