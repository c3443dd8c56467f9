"""Masking rules in the console and the API: validation, scope, styles, preview."""

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client

from audit.models import AuditRecord
from masking import service
from masking.engine import Report
from masking.models import MaskingRule
from tests.conftest import add_connection

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("masking_defaults")]


@pytest.fixture
def admin_client(alice) -> Client:
    client = Client()
    client.force_login(alice)
    return client


def mask(value, connection_id=None, tool=None, audience=service.AGENT):
    service.invalidate()
    report = Report()
    return service.masker_for(connection_id, tool, audience).mask_json(value, report), report


def test_default_rules_mask_keys_at_any_depth_and_case(alice):
    masked, report = mask({"User": {"PassWord": "hunter2", "tokens": [{"API_KEY": "abc"}]}})
    assert masked == {"User": {"PassWord": "[SECRET]", "tokens": [{"API_KEY": "[SECRET]"}]}}
    assert report.counts["Sensitive keys"] == 2


def test_api_creates_a_regex_rule_and_it_applies(admin_client):
    response = admin_client.post(
        "/api/masking-rules/",
        {
            "name": "Employee ids",
            "entity": "EMPLOYEE",
            "kind": "regex",
            "pattern": r"EMP-\d{6}",
            "style": "hash",
        },
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    first, _ = mask("owner EMP-123456 and EMP-123456 and EMP-654321")
    tokens = first.split(" ")
    assert tokens[1] == tokens[3] and tokens[1].startswith("[EMPLOYEE:")
    assert tokens[5] != tokens[1]
    assert AuditRecord.objects.filter(event="masking_rule.created").exists()


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("([a-z]+", "Not a valid RE2 regular expression"),
        (r"(a)\1", "Not a valid RE2 regular expression"),
        ("x*", "matches the empty string"),
        ("", "Enter a regular expression"),
    ],
)
def test_bad_expressions_are_refused_at_save(admin_client, pattern, message):
    response = admin_client.post(
        "/api/masking-rules/",
        {"name": "bad", "entity": "X", "kind": "regex", "pattern": pattern},
        content_type="application/json",
    )
    assert response.status_code == 400
    assert message in str(response.json())
    assert not MaskingRule.objects.filter(name="bad").exists()


def test_catastrophic_pattern_is_safe(alice, admin_client):
    response = admin_client.post(
        "/api/masking-rules/",
        {"name": "evil", "entity": "EVIL", "kind": "regex", "pattern": "(a+)+$"},
        content_type="application/json",
    )
    assert response.status_code == 201
    masked, _ = mask("a" * 50_000 + "b")
    assert masked.endswith("b")


def test_denylist_and_tool_scope(alice, admin_client):
    add_connection("crm", "http://127.0.0.1:9000/mcp")
    response = admin_client.post(
        "/api/masking-rules/",
        {
            "name": "Codenames",
            "entity": "CODENAME",
            "kind": "denylist",
            "words": ["Project Falcon", "bluebird"],
            "scope": "tool",
            "connection": "crm",
            "tool": "get_*",
        },
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    crm = MaskingRule.objects.get(name="Codenames").connection_id
    assert (
        mask("about PROJECT FALCON and Bluebird", crm, "get_doc")[0]
        == "about [CODENAME] and [CODENAME]"
    )
    assert mask("about Project Falcon", crm, "list_docs")[0] == "about Project Falcon"
    assert mask("about Project Falcon")[0] == "about Project Falcon"


def test_scope_needs_its_connection_and_tool(admin_client):
    response = admin_client.post(
        "/api/masking-rules/",
        {"name": "x", "entity": "X", "kind": "denylist", "words": ["x"], "scope": "tool"},
        content_type="application/json",
    )
    assert response.status_code == 400
    body = response.json()
    assert "connection" in body and "tool" in body


def test_only_admins_manage_rules(alice):
    bob = User.objects.create_user("bob", password="pw-bob-1")
    bob.groups.add(Group.objects.get_or_create(name="approver")[0])
    client = Client()
    client.force_login(bob)
    assert client.get("/api/masking-rules/").status_code == 403
    assert client.get("/masking/").status_code == 403
    assert Client().get("/masking/").status_code == 302


def test_console_page_preview_and_toggle(admin_client):
    page = admin_client.get("/masking/").content.decode()
    assert "Email addresses" in page and "Preview" in page
    preview = admin_client.post(
        "/masking/preview/", {"sample": '{"contact": "ada@example.com", "password": "x"}'}
    ).content.decode()
    assert "[EMAIL]" in preview and "ada@example.com" not in preview
    assert "Email addresses \u00d71" in preview
    rule = MaskingRule.objects.get(name="Email addresses")
    admin_client.post(f"/masking/{rule.pk}/toggle/")
    rule.refresh_from_db()
    assert rule.enabled is False
    assert mask("ada@example.com")[0] == "ada@example.com"


def test_console_form_shows_errors_next_to_fields(admin_client):
    response = admin_client.post(
        "/masking/new/",
        {
            "name": "r",
            "entity": "R",
            "kind": "regex",
            "pattern": "(",
            "style": "label",
            "scope": "global",
            "order": 5,
            "enabled": "on",
            "mask_for_agent": "on",
        },
    )
    assert response.status_code == 200
    assert "Not a valid RE2 regular expression" in response.content.decode()


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("4111 1111 1111 1111", "****1111"),
        ("GB82 WEST 1234 5698 7654 32", "****5432"),
        ("ghp_abcdefghijklmnop-x!", "****nopx"),  # the last four letters or digits
        ("user.name@example.com", "****ecom"),
        ("1234567", "****"),  # too short to show anything
        ("--------", "****"),
    ],
)
def test_partial_style_shows_the_last_four_letters_or_digits(value, shown):
    from masking.engine import Masker, Rule

    rule = Rule(id=1, name="partial", entity="X", style="partial", mask_for_agent=True)
    assert Masker([rule], b"key").replacement(rule, value) == shown
