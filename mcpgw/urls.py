from django.contrib import admin
from django.urls import include, path

from approvals import api as approvals_api
from console import auth_views as console_auth_views
from console import oidc, users_views
from console import views as console_views
from gateway import views as gateway_views

urlpatterns = [
    path("", console_views.home, name="home"),
    path("login/", console_auth_views.LoginView.as_view(), name="login"),
    path("logout/", console_auth_views.logout, name="logout"),
    path("oidc/authenticate/", oidc.AuthenticateView.as_view(), name="oidc_authentication_init"),
    path("oidc/callback/", oidc.CallbackView.as_view(), name="oidc_authentication_callback"),
    path("users/", users_views.users, name="users"),
    path("healthz", console_views.healthz, name="healthz"),
    path("connections/", console_views.connection_list, name="connections"),
    path("connections/new/", console_views.connection_new, name="connection-new"),
    path("connections/<slug:slug>/edit/", console_views.connection_edit, name="connection-edit"),
    path(
        "connections/<slug:slug>/toggle/",
        console_views.connection_toggle,
        name="connection-toggle",
    ),
    path("connections/<slug:slug>/test/", console_views.connection_test, name="connection-test"),
    path("tokens/", console_views.token_list, name="tokens"),
    path("tokens/<str:public_id>/revoke/", console_views.token_revoke, name="token-revoke"),
    path(
        "connections/<slug:slug>/tools/",
        console_views.connection_tools,
        name="connection-tools",
    ),
    path(
        "connections/<slug:slug>/tools/approve",
        console_views.approve_tools,
        name="connection-tools-approve",
    ),
    path(
        ".well-known/oauth-protected-resource/mcp/<slug:slug>",
        gateway_views.protected_resource_metadata,
        name="protected-resource-metadata",
    ),
    path("audit/", include("audit.urls")),
    path("audit/sinks/", include("audit.siem_urls")),
    path("api/audit/", include("audit.api_urls")),
    path("masking/", include("masking.urls")),
    path("api/masking-rules/", include("masking.api_urls")),
    path("approvals/", include("approvals.urls")),
    path("api/approvals/", include("approvals.api_urls")),
    path(
        "api/connections/<slug:slug>/policy",
        approvals_api.connection_policy,
        name="connection-policy-api",
    ),
    # Before the admin site: its own login would bypass the console's rate limit.
    path("admin/login/", console_auth_views.admin_login),
    path("api/", include("console.api_urls")),
    path("admin/", admin.site.urls),
]
