"""Connections of our own to the configured Postgres database, beside Django's.

Some work is better done on the event loop with psycopg's async connection than through
Django's synchronous connections in a worker thread: waiting for change notifications,
and the audit chain's writes on the data path.
"""

from typing import Any

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper

# What every connection of ours that writes (Django's and the audit writer's) sets for
# itself when it opens, whatever the database's or the role's defaults, in one statement:
#
# - READ COMMITTED, Postgres's own default, which every statement of ours is written for: a
#   statement that waits for a row another transaction changes goes on with the row as
#   that transaction left it (the audit chain's head, moved by another writer; an approval
#   that another approver decided first). Under REPEATABLE READ or SERIALIZABLE as a
#   default, the same statement fails instead ("could not serialize access due to
#   concurrent update").
# - synchronous_commit on where the default is off: an audit record is written ahead of
#   the call it records, and a commit that returns before its log is flushed may be lost
#   with the database's next crash, after the call went upstream. Any other value (local,
#   remote_write, remote_apply) already waits for the local flush and is kept.
#
# Set by a statement, not in libpq's startup `options`, which PgBouncer refuses or drops for
# these. A connection pooler between the gateway and Postgres keeps them only where it
# pools sessions (a transaction-pooling one hands each transaction a server connection
# that may never have run this statement).
SESSION_SETTINGS = (
    "SELECT set_config('default_transaction_isolation', 'read committed', false), "
    "set_config('synchronous_commit', CASE current_setting('synchronous_commit') "
    "WHEN 'off' THEN 'on' ELSE current_setting('synchronous_commit') END, false)"
)


def settle_session(connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    """Django's `connection_created` receiver: SESSION_SETTINGS on each new Postgres
    connection."""
    if connection.vendor == "postgresql":
        try:
            with connection.cursor() as cursor:
                cursor.execute(SESSION_SETTINGS)
        except BaseException:
            # Django keeps the connection it just made: never one without these settings.
            connection.close()
            raise


async def connect(application_name: str) -> Any:
    """An async connection of our own in autocommit mode, with SESSION_SETTINGS."""
    import psycopg

    connection = await psycopg.AsyncConnection.connect(conninfo(application_name), autocommit=True)
    try:
        await connection.execute(SESSION_SETTINGS)
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
