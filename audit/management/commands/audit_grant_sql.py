import re

from django.apps import apps
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.models import AuditHead, AuditRecord

# Letters, digits, _ and $, as Postgres allows in identifiers; quoted in the output anyway.
ROLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def app_tables() -> list[str]:
    """Every table the application's models use, except the two audit tables."""
    special = {AuditRecord._meta.db_table, AuditHead._meta.db_table}
    tables = {
        model._meta.db_table
        for model in apps.get_models(include_auto_created=True)
        if model._meta.managed and not model._meta.proxy
    }
    return sorted(tables - special)


def grant_sql(role: str, database: str | None, schema: str) -> str:
    who = quote(role)
    where = quote(schema)
    record = f"{where}.{quote(AuditRecord._meta.db_table)}"
    head = f"{where}.{quote(AuditHead._meta.db_table)}"
    lines = [
        f"-- Privileges of the gateway's runtime role {role}. Run as the owner of the tables",
        "-- (the role that runs `manage.py migrate`), after every migration that adds tables.",
        "-- Create the role first, e.g.: CREATE ROLE name LOGIN PASSWORD '...';",
        "BEGIN;",
    ]
    if database:
        lines.append(f"GRANT CONNECT ON DATABASE {quote(database)} TO {who};")
    lines += [
        f"GRANT USAGE ON SCHEMA {where} TO {who};",
        # Start from nothing, so that running this again also takes back what was
        # granted by hand (for example DELETE on the audit trail).
        f"REVOKE ALL ON ALL TABLES IN SCHEMA {where} FROM {who};",
        f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {where} FROM {who};",
        "-- The audit trail: append and read, nothing else (no UPDATE, DELETE, TRUNCATE).",
        f"GRANT SELECT, INSERT ON {record} TO {who};",
        "-- The chain head: locked (SELECT ... FOR UPDATE) and moved by every append.",
        f"GRANT SELECT, UPDATE ON {head} TO {who};",
        "-- Everything else the application reads and writes.",
    ]
    lines += [
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {where}.{quote(table)} TO {who};"
        for table in app_tables()
    ]
    lines += [
        f"GRANT SELECT ON {where}.{quote('django_migrations')} TO {who};",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {where} TO {who};",
        "COMMIT;",
    ]
    return "\n".join(lines) + "\n"


class Command(BaseCommand):
    help = (
        "Print the Postgres GRANT statements for the role the gateway runs as in production. "
        "That role may only SELECT and INSERT audit records (never UPDATE, DELETE or "
        "TRUNCATE them), SELECT and UPDATE the audit chain head, read and write the other "
        "application tables, and use their sequences. It owns no table, so it cannot drop "
        "the append-only triggers either. Tables belong to a separate owner role that runs "
        "`manage.py migrate` and `manage.py audit_archive`. Apply the output as that owner, "
        'for example: manage.py audit_grant_sql --role mcpgw_app | psql "$OWNER_DATABASE_URL"; '
        "then set DATABASE_URL to connect as the role. Run it again after migrations that "
        "add tables."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--role", required=True, help="the runtime role (must exist)")
        parser.add_argument(
            "--database",
            help="database to grant CONNECT on (default: the configured Postgres database)",
        )
        parser.add_argument("--schema", default="public", help="schema of the tables (public)")

    def handle(self, *args: object, **options: str | None) -> None:
        role = options["role"] or ""
        schema = options["schema"] or "public"
        if not ROLE_NAME.match(role):
            raise CommandError(f"--role {role!r} is not a plain Postgres role name")
        if not ROLE_NAME.match(schema):
            raise CommandError(f"--schema {schema!r} is not a plain Postgres schema name")
        database = options["database"]
        if database is None:
            default = settings.DATABASES["default"]
            if default["ENGINE"].endswith("postgresql"):
                database = str(default["NAME"])
        self.stdout.write(grant_sql(role, database, schema), ending="")
