"""Logging in and out of the console.

The login page offers the organisation's provider (OpenID Connect, when configured) and
password login (the embedded default and break-glass, unless PASSWORD_LOGIN=false).
Failed password logins are counted per username and per client address in the cache;
past the limit every attempt, right or wrong, gets 429 until the window has passed.
"""

import hashlib
import logging
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import auth
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import AuthenticationForm
from django.core.cache import cache
from django.forms.forms import NON_FIELD_ERRORS
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.views.decorators.http import require_POST

from audit.events import record_event

from . import oidc
from .roles import user_roles

logger = logging.getLogger(__name__)


def _client_address(request: HttpRequest) -> str:
    # Behind a proxy, `mcpgw.serve --proxy-headers` puts the client's address here.
    return request.META.get("REMOTE_ADDR", "")


def _failure_keys(username: str, address: str) -> list[tuple[str, str, int]]:
    """(scope, cache key, limit) for each counter an attempt is charged to."""
    limits = settings.LOGIN_THROTTLE
    digest = hashlib.sha256(username.strip().lower().encode()).hexdigest()
    keys = [("username", f"login-failures:user:{digest}", limits["PER_USERNAME"])]
    if address:
        keys.append(("address", f"login-failures:addr:{address}", limits["PER_ADDRESS"]))
    return keys


def _locked(username: str, address: str) -> bool:
    keys = _failure_keys(username, address)
    try:
        counts = cache.get_many([key for _, key, _ in keys])
    except Exception:
        # Break-glass login must work when Redis is down: the limit is then not enforced.
        logger.exception("login throttle unavailable: cannot read failure counters")
        return False
    return any(counts.get(key, 0) >= limit for _, key, limit in keys)


def _increment(key: str, window: int) -> int:
    # A fixed window from the first failure: incr keeps the key's expiry.
    cache.add(key, 0, timeout=window)
    try:
        return cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, timeout=window)
        return 1


def _count_failure(request: HttpRequest, username: str) -> None:
    """Charge one failure to the username and the address; audit the start of a lockout."""
    address = _client_address(request)
    window = settings.LOGIN_THROTTLE["WINDOW_SECONDS"]
    for scope, key, limit in _failure_keys(username, address):
        try:
            count = _increment(key, window)
        except Exception:
            logger.exception("login throttle unavailable: cannot count a failure")
            continue
        if count == limit:
            record_event(
                "auth.login_locked",
                client_address=address,
                user_agent=request.META.get("HTTP_USER_AGENT", ""),
                details={
                    "username": username[:150],
                    "scope": scope,
                    "failures": count,
                    "window_seconds": window,
                },
            )


class LoginView(auth_views.LoginView):
    template_name = "registration/login.html"
    form_class = AuthenticationForm

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        next_url = context.get("next") or ""
        context.update(
            oidc_enabled=oidc.enabled(),
            provider_name=oidc.provider_name(),
            password_login=settings.PASSWORD_LOGIN,
            oidc_url=reverse("oidc_authentication_init")
            + (f"?{urlencode({'next': next_url})}" if next_url else ""),
        )
        return context

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not settings.PASSWORD_LOGIN:
            return self.render_to_response(self.get_context_data(password_off=True), status=403)
        if _locked(request.POST.get("username", ""), _client_address(request)):
            return self.locked_out()
        return super().post(request, *args, **kwargs)

    def locked_out(self) -> HttpResponse:
        window = settings.LOGIN_THROTTLE["WINDOW_SECONDS"]
        response = self.render_to_response(
            self.get_context_data(locked=True, window_minutes=max(1, round(window / 60))),
            status=429,
        )
        response["Retry-After"] = str(window)
        return response

    def form_invalid(self, form: AuthenticationForm) -> HttpResponse:
        if form.has_error(NON_FIELD_ERRORS, "invalid_login") or form.has_error(
            NON_FIELD_ERRORS, "inactive"
        ):
            _count_failure(self.request, self.request.POST.get("username", ""))
        return super().form_invalid(form)

    def form_valid(self, form: AuthenticationForm) -> HttpResponse:
        user = form.get_user()
        if not user_roles(user):
            return oidc.no_access(self.request, user)
        return super().form_valid(form)


@require_POST
def logout(request: HttpRequest) -> HttpResponse:
    """End the session, then end the provider's session too when it offers that."""
    provider_logout = oidc.end_session_url(request)
    auth.logout(request)
    return redirect(provider_logout or settings.LOGOUT_REDIRECT_URL)


def admin_login(request: HttpRequest) -> HttpResponse:
    """The admin site logs in through the console's login (and so its rate limit)."""
    next_url = request.GET.get("next", reverse("admin:index"))
    return redirect(f"{reverse('login')}?{urlencode({'next': next_url})}")
