from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from approvals import api as approvals_api
from console import views as console_views
from gateway import views as gateway_views

urlpatterns = [
    path("", console_views.home, name="home"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("healthz", console_views.healthz, name="healthz"),
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
    path("admin/", admin.site.urls),
]
