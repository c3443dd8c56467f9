"""The one front door for objects in the console: views never fetch them by id alone."""

from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import Http404

from gateway.models import Connection

from .roles import ADMIN, APPROVER, AUDITOR, VIEWER, has_role


def get_connection_for_user(user: Any, slug: str, *, write: bool = False) -> Connection:
    """The connection, if the user may see it (any role) or change it (admin)."""
    allowed = has_role(user, ADMIN) if write else has_role(user, ADMIN, APPROVER, AUDITOR, VIEWER)
    if not allowed:
        raise PermissionDenied
    connection = Connection.objects.filter(slug=slug).first()
    if connection is None:
        raise Http404("No such connection")
    return connection
