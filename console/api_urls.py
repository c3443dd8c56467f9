"""/api/connections/, /api/tokens/, and the OpenAPI schema and docs of the whole API."""

from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from . import api

app_name = "console-api"
urlpatterns = [
    path("connections/", api.ConnectionListView.as_view(), name="connections"),
    path("connections/<slug:slug>", api.ConnectionDetailView.as_view(), name="connection"),
    path("connections/<slug:slug>/test", api.ConnectionTestView.as_view(), name="connection-test"),
    path("tokens/", api.TokenListView.as_view(), name="tokens"),
    path("tokens/<str:public_id>/revoke", api.TokenRevokeView.as_view(), name="token-revoke"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    # Swagger UI with its script served separately, so it runs under script-src 'self'.
    path(
        "docs/",
        SpectacularSwaggerSplitView.as_view(url_name="console-api:schema"),
        name="docs",
    ),
]
