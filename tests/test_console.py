"""The console's front door: log in, land on the dashboard, never see a secret."""

import pytest
from django.test import Client

from tests.conftest import add_connection, issue_token

pytestmark = pytest.mark.django_db


def test_login_page_and_redirect_for_anonymous(client: Client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")
    assert client.get("/login/").status_code == 200


def test_admin_logs_in_and_sees_connections_without_secrets(client: Client, alice):
    add_connection("crm", "http://127.0.0.1:9000/mcp", "Authorization: Bearer canary-credential-42")
    token = issue_token("alice", "--run", "nightly")
    response = client.post("/login/", {"username": "alice", "password": "pw-alice-1"})
    assert response.status_code == 302 and response["Location"] == "/"
    pages = {url: client.get(url).content.decode() for url in ("/", "/connections/", "/tokens/")}
    assert "Dashboard" in pages["/"] and "crm" in pages["/"]
    assert "crm" in pages["/connections/"] and "Authorization" in pages["/connections/"]
    assert "nightly" in pages["/tokens/"]
    for page in pages.values():
        assert "canary-credential-42" not in page
        assert token not in page


def test_wrong_password_is_refused(client: Client, alice):
    response = client.post("/login/", {"username": "alice", "password": "wrong"})
    assert response.status_code == 200
    assert "didn't match" in response.content.decode()


def test_health_endpoint(client: Client):
    assert client.get("/healthz").json() == {"status": "ok"}
