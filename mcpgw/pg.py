"""Connections of our own to the configured Postgres database, beside Django's.

Some work is better done on the event loop with psycopg's async connection than through
Django's synchronous connections in a worker thread: waiting for change notifications,
and the audit chain's writes on the data path.
"""

from typing import Any

from django.db import connections

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
