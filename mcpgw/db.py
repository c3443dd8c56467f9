"""The database backend, for code on the event loop that needs its vendor, quoting or
value adapters but no connection."""

from functools import cache

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper


@cache
def backend(alias: str = "default") -> BaseDatabaseWrapper:
    """A database wrapper kept for the life of the process, for its vendor, operations
    and features, never for queries (it never connects).

    Django keeps one connection object per async context: `connections[alias]` on the
    event loop makes a new one in every request, with a dozen objects in reference cycles
    that only the collector's slower passes free."""
    return connections.create_connection(alias)
