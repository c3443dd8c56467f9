"""Connections of our own to the configured Postgres database, beside Django's.

Some work is better done on the event loop with psycopg's async connection than through
Django's synchronous connections in a worker thread: waiting for change notifications,
and the audit chain's writes on the data path.
"""

from typing import Any

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper

# Every statement of ours is written for Postgres's own default isolation level: a
# statement that waits for a row another transaction changes goes on with the row as that
# transaction left it (the audit chain's head, moved by another writer; an approval that
# another approver decided first). Under REPEATABLE READ or SERIALIZABLE, which a database
# or a role may have as its default, the same statement fails instead ("could not
# serialize access due to concurrent update"). So Django's connections and the audit
# writer's set their own level when they open, whatever the database's default. (A SET
# statement: PgBouncer refuses this setting in libpq's startup `options`.)
READ_COMMITTED = "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED"


def pin_isolation(connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    """Django's `connection_created` receiver: READ COMMITTED on each new Postgres
    connection."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(READ_COMMITTED)


async def connect(application_name: str) -> Any:
    """An async connection of our own in autocommit mode, at READ COMMITTED."""
    import psycopg

    connection = await psycopg.AsyncConnection.connect(conninfo(application_name), autocommit=True)
    try:
        await connection.execute(READ_COMMITTED)
    except BaseException:
        await connection.close()
        raise
    return connection


# OPTIONS keys that Django reads itself; everything else in OPTIONS is passed to libpq.
_DJANGO_OPTIONS = {
    "assume_role",
    "context",
    "cursor_factory",
    "isolation_level",
    "pool",
    "prepare_threshold",
    "server_side_binding",
}


def conninfo(application_name: str, alias: str = "default") -> str:
    """libpq connection string for the database Django uses under `alias`."""
    from psycopg.conninfo import make_conninfo

    database = connections[alias].settings_dict
    params: dict[str, Any] = {
        "dbname": database.get("NAME"),
        "user": database.get("USER"),
        "password": database.get("PASSWORD"),
        "host": database.get("HOST"),
        "port": database.get("PORT"),
        **{
            key: value
            for key, value in (database.get("OPTIONS") or {}).items()
            if key not in _DJANGO_OPTIONS
        },
        "application_name": application_name,
    }
    return make_conninfo(**{k: str(v) for k, v in params.items() if v not in (None, "")})
