"""Logging people in with the organisation's OpenID Connect provider.

mozilla-django-oidc runs the authorization-code flow (with state, nonce and PKCE); this
module adapts it to the gateway:

- the provider's endpoints and keys come from gateway.jwt (discovery, cached), so the
  ID token is checked against the provider's published keys, its issuer and our client
  id, and every HTTP call has OIDC_TIMEOUT;
- a person is the user whose username is their email address, created at first login;
- a user managed by the IdP has no usable password, and a local account (one with a
  password: the embedded default, break-glass) can never be taken over by an IdP login
  that carries the same address;
- at every login the user's roles are set exactly from the group claim through
  OIDC_ROLE_MAP: removed from the IdP group, the role is gone at the next login;
- someone without any role gets a "no access" page and no session.
"""

import logging
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlencode

import jwt
import requests
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import SuspiciousOperation
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render, resolve_url
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

from audit.events import record_event
from gateway import jwt as provider_keys
from gateway.jwt import ProviderUnavailable

from .roles import ROLES, user_roles

logger = logging.getLogger(__name__)

SOURCE_IDP = "idp"
SOURCE_LOCAL = "local"


def enabled() -> bool:
    return provider_keys.enabled()


def provider_name() -> str:
    return settings.OIDC_PROVIDER_NAME


def is_idp_managed(user: Any) -> bool:
    """Users created by an IdP login have no usable password; every other user is local."""
    return not user.has_usable_password()


def roles_for_groups(groups: Iterable[str]) -> set[str]:
    held = set(groups)
    return {role for role, names in settings.OIDC_ROLE_MAP.items() if held & set(names)}


def sync_roles(user: Any, groups: Iterable[str], *, request: HttpRequest | None = None) -> None:
    """Set the user's role groups exactly to those the IdP groups map to, and audit changes.

    Groups that are not roles are left alone. Superuser status does not come from the
    IdP, so an IdP-managed user loses it here too.
    """
    groups = tuple(groups)
    wanted = roles_for_groups(groups)
    with transaction.atomic():
        current = set(user.groups.filter(name__in=ROLES).values_list("name", flat=True))
        added, removed = wanted - current, current - wanted
        for name in sorted(added):
            user.groups.add(Group.objects.get_or_create(name=name)[0])
        if removed:
            user.groups.remove(*Group.objects.filter(name__in=removed))
        dropped_superuser = user.is_superuser or user.is_staff
        if dropped_superuser:
            user.is_superuser = user.is_staff = False
            user.save(update_fields=["is_superuser", "is_staff"])
        if added or removed or dropped_superuser:
            mapped = {name for names in settings.OIDC_ROLE_MAP.values() for name in names}
            record_event(
                "auth.roles_changed",
                actor=user,
                client_address=request.META.get("REMOTE_ADDR", "") if request else "",
                details={
                    "source": SOURCE_IDP,
                    "added": sorted(added),
                    "removed": sorted(removed),
                    "superuser_removed": dropped_superuser,
                    "idp_groups": sorted(set(groups) & mapped),
                },
            )


def _refused(request: HttpRequest, reason: str) -> SuspiciousOperation:
    """Audit why an IdP login is refused; the caller raises what this returns."""
    logger.warning("OpenID Connect login refused: %s", reason)
    # Django's user_login_failed signal records the failure too; this says why.
    record_event(
        "auth.oidc_refused",
        client_address=request.META.get("REMOTE_ADDR", ""),
        user_agent=request.META.get("HTTP_USER_AGENT", ""),
        details={"reason": reason[:200]},
    )
    return SuspiciousOperation(reason)


class OIDCBackend(OIDCAuthenticationBackend):
    """mozilla-django-oidc's backend, reading the provider lazily (discovery may be slow or
    down, and Django instantiates backends for every request that has a session)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.UserModel = get_user_model()

    @property
    def OIDC_OP_TOKEN_ENDPOINT(self) -> str:  # the name the library reads
        return provider_keys.provider().token_endpoint

    @property
    def OIDC_OP_USER_ENDPOINT(self) -> str:
        return provider_keys.provider().userinfo_endpoint

    @property
    def OIDC_OP_JWKS_ENDPOINT(self) -> str:
        return provider_keys.provider().jwks_uri

    @property
    def OIDC_RP_CLIENT_ID(self) -> str:
        return settings.OIDC_RP_CLIENT_ID

    @property
    def OIDC_RP_CLIENT_SECRET(self) -> str:
        return settings.OIDC_RP_CLIENT_SECRET

    OIDC_RP_IDP_SIGN_KEY = None

    def authenticate(self, request: HttpRequest | None, **kwargs: Any) -> Any:
        # Only the callback passes a nonce; a password login never reaches the provider,
        # whatever its query string holds.
        if request is None or "nonce" not in kwargs or not enabled():
            return None
        try:
            return super().authenticate(request, **kwargs)
        except (requests.RequestException, ProviderUnavailable) as exc:
            logger.warning("OpenID Connect login failed, provider unavailable: %s", exc)
        except SuspiciousOperation as exc:  # already audited where it was raised
            logger.info("OpenID Connect login refused: %s", exc)
        return None

    def verify_token(self, token: str, **kwargs: Any) -> dict[str, Any]:
        """The ID token's claims: signed by a published key of the provider, issued by it,
        for our client id, unexpired, and carrying the nonce of this login."""
        try:
            payload = provider_keys.decode(token, audience=[settings.OIDC_RP_CLIENT_ID])
        except (jwt.InvalidTokenError, jwt.PyJWKError) as exc:
            raise _refused(self.request, f"ID token refused: {exc}") from exc
        if payload.get("nonce") != kwargs.get("nonce"):
            raise _refused(self.request, "ID token nonce does not match this login")
        return payload

    def get_userinfo(
        self, access_token: str, id_token: str, payload: dict[str, Any]
    ) -> dict[str, Any]:
        claims = super().get_userinfo(access_token, id_token, payload)
        # OpenID Connect Core 5.3.2: the UserInfo response must be about the same subject.
        if claims.get("sub") != payload.get("sub"):
            raise _refused(self.request, "UserInfo subject differs from the ID token's")
        # Some providers put the groups only into the ID token.
        if settings.OIDC_GROUPS_CLAIM not in claims and settings.OIDC_GROUPS_CLAIM in payload:
            claims[settings.OIDC_GROUPS_CLAIM] = payload[settings.OIDC_GROUPS_CLAIM]
        return claims

    def verify_claims(self, claims: dict[str, Any]) -> bool:
        email = claims.get("email")
        if not (isinstance(email, str) and 0 < len(email) <= 150 and "@" in email):
            _refused(self.request, "no usable email claim")
            return False
        # The address names the account: one the provider says it has not verified could
        # be anybody's. (Providers that never send email_verified are trusted.)
        if claims.get("email_verified") is False:
            _refused(self.request, f"email {email} is not verified by the provider")
            return False
        return True

    def filter_users_by_claims(self, claims: dict[str, Any]) -> Any:
        return self.UserModel.objects.filter(username__iexact=claims["email"])

    def create_user(self, claims: dict[str, Any]) -> Any:
        email = claims["email"]
        # No password: this account can be entered only through the IdP.
        user = self.UserModel.objects.create_user(
            email.lower(),
            email=email,
            first_name=str(claims.get("given_name", ""))[:150],
            last_name=str(claims.get("family_name", ""))[:150],
        )
        sync_roles(user, provider_keys.claim_groups(claims), request=self.request)
        return user

    def update_user(self, user: Any, claims: dict[str, Any]) -> Any:
        if not is_idp_managed(user):
            raise _refused(
                self.request,
                f"{user.get_username()} is a local account; an IdP login cannot use it",
            )
        profile = {
            "email": claims["email"],
            "first_name": str(claims.get("given_name", user.first_name))[:150],
            "last_name": str(claims.get("family_name", user.last_name))[:150],
        }
        changed = [field for field, value in profile.items() if getattr(user, field) != value]
        if changed:
            for field in changed:
                setattr(user, field, profile[field])
            user.save(update_fields=changed)
        sync_roles(user, provider_keys.claim_groups(claims), request=self.request)
        return user


class AuthenticateView(OIDCAuthenticationRequestView):
    """/oidc/authenticate/: off to the provider's authorization endpoint."""

    def get(self, request: HttpRequest) -> HttpResponse:
        if not enabled():
            raise Http404("OpenID Connect is not configured")
        try:
            self.OIDC_OP_AUTH_ENDPOINT = provider_keys.provider().authorization_endpoint
        except ProviderUnavailable as exc:
            logger.warning("cannot start an OpenID Connect login: %s", exc)
            messages.error(
                request,
                f"{provider_name()} cannot be reached at the moment. Try again in a minute.",
            )
            return redirect("login")
        self.OIDC_RP_CLIENT_ID = settings.OIDC_RP_CLIENT_ID
        return super().get(request)


class CallbackView(OIDCAuthenticationCallbackView):
    """/oidc/callback/: the provider sends the person back here with a code."""

    def get(self, request: HttpRequest) -> HttpResponse:
        if not enabled():
            raise Http404("OpenID Connect is not configured")
        return super().get(request)

    def login_success(self) -> HttpResponse:
        if not user_roles(self.user):
            # No session for someone who may do nothing here.
            self.request.session.pop("oidc_id_token", None)
            return no_access(self.request, self.user)
        return super().login_success()

    def login_failure(self) -> HttpResponse:
        messages.error(
            self.request,
            f"Logging in with {provider_name()} did not complete. Try again, or ask an"
            " administrator if it keeps failing.",
        )
        return redirect("login")


def no_access(request: HttpRequest, user: Any) -> HttpResponse:
    """The page for someone who proved who they are but holds no role."""
    record_event(
        "auth.no_access",
        client_address=request.META.get("REMOTE_ADDR", ""),
        user_agent=request.META.get("HTTP_USER_AGENT", ""),
        details={"username": user.get_username(), "idp": is_idp_managed(user)},
    )
    return render(
        request,
        "console/no_access.html",
        {
            "person": user,
            "idp": is_idp_managed(user),
            "provider_name": provider_name(),
            "role_map": sorted(settings.OIDC_ROLE_MAP.items()),
        },
        status=403,
    )


def end_session_url(request: HttpRequest) -> str:
    """The provider's logout URL for this session ("" if it has none), built before the
    session is flushed: it carries the ID token as id_token_hint."""
    id_token = request.session.get("oidc_id_token")
    if not id_token or not enabled():
        return ""
    try:
        endpoint = provider_keys.provider().end_session_endpoint
    except ProviderUnavailable:
        return ""
    if not endpoint:
        return ""
    query = urlencode(
        {
            "id_token_hint": id_token,
            "client_id": settings.OIDC_RP_CLIENT_ID,
            "post_logout_redirect_uri": request.build_absolute_uri(
                resolve_url(settings.LOGOUT_REDIRECT_URL)
            ),
        }
    )
    return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"
