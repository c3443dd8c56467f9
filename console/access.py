"""The one front door for objects in the console: views never fetch them by id alone.

Who may do what:
- connections: anyone holding a role sees them; only admins change or test them;
- tokens: anyone holding a role issues tokens for themselves and sees and revokes their
  own; admins see, issue and revoke everyone's. Another person's token is "not found",
  so its existence is not revealed.
"""

import re
from typing import Any

from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404

from gateway.models import AgentToken, Connection

from .roles import ADMIN, ROLES, has_role

PUBLIC_ID = re.compile(r"^[0-9a-f]{12}$")


def has_console_role(user: Any) -> bool:
    """Whether the user may use the console at all (holds any role)."""
    return has_role(user, *ROLES)


def require_console_role(user: Any) -> None:
    if not has_console_role(user):
        raise PermissionDenied("The console needs a role: admin, approver, auditor or viewer.")


def get_connection_for_user(user: Any, slug: str, *, write: bool = False) -> Connection:
    """The connection, if the user may see it (any role) or change it (admin)."""
    allowed = has_role(user, ADMIN) if write else has_console_role(user)
    if not allowed:
        raise PermissionDenied
    connection = Connection.objects.filter(slug=slug).first()
    if connection is None:
        raise Http404("No such connection")
    return connection


def connections_for_user(user: Any) -> QuerySet[Connection]:
    require_console_role(user)
    return Connection.objects.all()


def may_issue_for_others(user: Any) -> bool:
    return has_role(user, ADMIN)


def tokens_for_user(user: Any) -> QuerySet[AgentToken]:
    """The tokens the user may see: all of them for an admin, otherwise their own."""
    require_console_role(user)
    tokens = AgentToken.objects.select_related("user", "connection")
    if has_role(user, ADMIN):
        return tokens
    return tokens.filter(user=user)


def get_token_for_user(user: Any, public_id: str) -> AgentToken:
    """A token the user may see and revoke (their own, or any for an admin)."""
    tokens = tokens_for_user(user)
    token = tokens.filter(public_id=public_id).first() if PUBLIC_ID.match(public_id) else None
    if token is None:
        raise Http404("No such token")
    return token
