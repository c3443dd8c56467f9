"""Per-connection policy: rule order, groups, destructive tools, default action, grants;
edited through the API and the policy page."""

import json
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.test import Client

from approvals.policy import evaluate, may_use, visible_tools
from audit.models import AuditRecord
from tests.test_approvals_helpers import (
    fast_passwords,  # noqa: F401 (autouse)
    make_bob,
    make_charlie,
    make_connection,
    make_token,
    make_user,
)

pytestmark = pytest.mark.django_db


def error_text(response: Any) -> str:
    """Every key and message of a JSON error body, as plain text."""

    def walk(value: Any) -> list[str]:
        if isinstance(value, dict):
            return [part for k, v in value.items() for part in (str(k), *walk(v))]
        if isinstance(value, list):
            return [part for item in value for part in walk(item)]
        return [str(value)]

    return " ".join(walk(response.json()))


def put_policy(client: Client, slug: str, document: dict[str, Any]) -> Any:
    return client.put(
        f"/api/connections/{slug}/policy", json.dumps(document), content_type="application/json"
    )


def policy(
    rules: list[dict[str, Any]],
    default: str = "allow",
    grants: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    return {
        "default_action": default,
        "rules": rules,
        "grants": grants or {"users": [], "groups": [], "tokens": []},
    }


@pytest.fixture
def admin_client(client: Client, alice: Any) -> Client:
    client.force_login(alice)
    return client


def set_rules(admin_client: Client, rules: list[dict[str, Any]], default: str = "allow") -> int:
    response = put_policy(admin_client, "crm", policy(rules, default))
    assert response.status_code == 200, response.json()
    from gateway.models import Connection

    return Connection.objects.get(slug="crm").pk


def action(connection_id: int, user: Any, tool: str, annotations: Any = None) -> str:
    return evaluate(connection_id, user.pk, tool, annotations).action


def test_exact_name_rule_wins_over_an_earlier_glob(admin_client: Client):
    make_connection()
    user = make_user("agent-owner")
    crm = set_rules(
        admin_client,
        [{"tool": "*", "action": "deny"}, {"tool": "read_file", "action": "allow"}],
    )
    assert action(crm, user, "read_file") == "allow"
    assert action(crm, user, "write_file") == "deny"
    decision = evaluate(crm, user.pk, "read_file", None)
    assert decision.rule_id is not None and "exact" in decision.reason


def test_globs_are_tried_in_rule_order(admin_client: Client):
    make_connection()
    user = make_user("agent-owner")
    crm = set_rules(
        admin_client,
        [
            {"tool": "delete_*", "action": "hold"},
            {"tool": "d*", "action": "deny"},
            {"tool": "get_?", "action": "deny"},
        ],
    )
    assert action(crm, user, "delete_customer") == "hold"
    assert action(crm, user, "drop_table") == "deny"
    assert action(crm, user, "get_x") == "deny"
    assert action(crm, user, "get_xy") == "allow"
    # Tool names are case-sensitive, and so are patterns.
    assert action(crm, user, "Delete_customer") == "allow"


def test_group_specific_rules_apply_to_members_only(admin_client: Client):
    make_connection()
    agent = make_user("robot", "agents")
    oncall = make_user("olivia", "oncall")
    both = make_user("bea", "agents", "oncall")
    outsider = make_user("otto")
    crm = set_rules(
        admin_client,
        [
            {"tool": "delete_*", "action": "hold", "groups": ["agents"]},
            {"tool": "delete_*", "action": "allow", "groups": ["oncall"]},
            {"tool": "delete_*", "action": "deny"},
        ],
    )
    assert action(crm, agent, "delete_user") == "hold"
    assert action(crm, oncall, "delete_user") == "allow"
    assert action(crm, both, "delete_user") == "hold"  # the first rule that applies
    assert action(crm, outsider, "delete_user") == "deny"


def test_destructive_tools_are_held_unless_a_rule_says_otherwise(admin_client: Client):
    make_connection()
    user = make_user("agent-owner")
    destructive = {"destructiveHint": True}
    crm = set_rules(admin_client, [{"tool": "purge_cache", "action": "allow"}])
    assert action(crm, user, "drop_table", destructive) == "hold"
    assert action(crm, user, "purge_cache", destructive) == "allow"
    assert action(crm, user, "drop_table", {"destructiveHint": False}) == "allow"
    assert action(crm, user, "drop_table", {"readOnlyHint": True}) == "allow"
    assert "destructive" in evaluate(crm, user.pk, "drop_table", destructive).reason


def test_default_action_applies_when_nothing_matches(admin_client: Client):
    connection = make_connection()
    user = make_user("agent-owner")
    # A connection nobody configured allows.
    assert action(connection.pk, user, "anything") == "allow"
    crm = set_rules(admin_client, [{"tool": "read_*", "action": "allow"}], default="deny")
    assert action(crm, user, "read_file") == "allow"
    assert action(crm, user, "write_file") == "deny"
    set_rules(admin_client, [], default="hold")
    assert action(crm, user, "write_file") == "hold"


def test_denied_tools_are_left_out_of_the_tool_list(admin_client: Client):
    make_connection()
    user = make_user("agent-owner")
    crm = set_rules(
        admin_client,
        [{"tool": "delete_*", "action": "hold"}, {"tool": "drop_*", "action": "deny"}],
    )
    tools = [
        {"name": "read_file"},
        {"name": "delete_file", "annotations": {"destructiveHint": True}},
        {"name": "drop_table"},
    ]
    assert [t["name"] for t in visible_tools(crm, user.pk, tools)] == ["read_file", "delete_file"]


def test_without_grants_every_active_user_may_use_a_connection(alice: Any):
    connection = make_connection()
    user = make_user("dora")
    token = make_token(user)
    assert may_use(connection.pk, user.pk, token.pk)
    user.is_active = False
    user.save()
    assert not may_use(connection.pk, user.pk, token.pk)


def test_grants_to_users_groups_and_tokens(admin_client: Client):
    connection = make_connection()
    dora, erin, finn, gus = (make_user(n) for n in ("dora", "erin", "finn", "gus"))
    Group.objects.create(name="agents").user_set.add(erin)
    finn_ci, finn_other = make_token(finn, "ci"), make_token(finn, "other")
    grants = {"users": ["dora"], "groups": ["agents"], "tokens": [f"mgw_{finn_ci.public_id}…"]}
    response = put_policy(admin_client, "crm", policy([], grants=grants))
    assert response.status_code == 200, response.json()
    assert response.json()["grants"] == {
        "users": ["dora"],
        "groups": ["agents"],
        "tokens": [finn_ci.public_id],
    }
    assert may_use(connection.pk, dora.pk, make_token(dora).pk)
    assert may_use(connection.pk, erin.pk, make_token(erin).pk)
    assert may_use(connection.pk, finn.pk, finn_ci.pk)
    assert not may_use(connection.pk, finn.pk, finn_other.pk)
    assert not may_use(connection.pk, gus.pk, make_token(gus).pk)


def test_deleting_the_only_granted_group_closes_the_connection(admin_client: Client):
    connection = make_connection()
    erin, gus = make_user("erin", "agents"), make_user("gus")
    grants = {"users": [], "groups": ["agents"], "tokens": []}
    assert put_policy(admin_client, "crm", policy([], grants=grants)).status_code == 200
    Group.objects.get(name="agents").delete()
    assert not may_use(connection.pk, erin.pk, make_token(erin).pk)
    assert not may_use(connection.pk, gus.pk, make_token(gus).pk)
    # Saving an empty grant list is the explicit way to open it to everyone again.
    assert put_policy(admin_client, "crm", policy([])).status_code == 200
    assert may_use(connection.pk, gus.pk, make_token(gus).pk)


def test_policy_api_round_trip_is_audited(admin_client: Client):
    make_connection()
    Group.objects.create(name="agents")
    document = policy(
        [
            {"tool": "delete_*", "action": "hold", "groups": ["agents"]},
            {"tool": "read_file", "action": "allow", "groups": []},
        ],
        default="deny",
    )
    assert put_policy(admin_client, "crm", document).status_code == 200
    got = admin_client.get("/api/connections/crm/policy").json()
    assert got == {"connection": "crm", **document}
    event = AuditRecord.objects.filter(event="policy.updated").get()
    assert event.username == "alice" and event.connection == "crm"
    assert event.details["after"]["rules"][0]["tool"] == "delete_*"


@pytest.mark.parametrize(
    ("rules", "field", "message"),
    [
        ([{"tool": "delete_[abc", "action": "hold"}], "tool", "without a closing"),
        ([{"tool": "a]b", "action": "hold"}], "tool", "without an opening"),
        ([{"tool": "rm -rf", "action": "deny"}], "tool", "use letters, digits"),
        ([{"tool": "", "action": "deny"}], "tool", "blank"),
        ([{"tool": "x", "action": "maybe"}], "action", '"maybe" is not an action'),
        ([{"tool": "x", "action": "hold", "groups": ["nobody"]}], "groups", "No group named"),
    ],
)
def test_policy_api_refuses_bad_rules_with_clear_messages(
    admin_client: Client, rules: list[dict[str, Any]], field: str, message: str
):
    make_connection()
    response = put_policy(admin_client, "crm", policy(rules))
    assert response.status_code == 400
    assert message in error_text(response), response.json()
    assert field in error_text(response)
    assert not AuditRecord.objects.filter(event="policy.updated").exists()


def test_policy_api_refuses_unknown_names_and_missing_parts(admin_client: Client):
    make_connection()
    response = put_policy(
        admin_client,
        "crm",
        policy([], default="sometimes", grants={"users": ["ghost"], "groups": [], "tokens": []}),
    )
    assert response.status_code == 400
    assert "is not an action" in response.json()["default_action"][0]
    response = put_policy(admin_client, "crm", policy([], grants={"users": ["ghost"]}))
    assert response.status_code == 400
    assert response.json() == {"grants.users": ["No user named ghost."]}
    response = put_policy(admin_client, "crm", {"default_action": "allow"})
    assert response.status_code == 400
    assert set(response.json()) == {"rules", "grants"}


def test_only_admins_read_or_edit_policies(client: Client, alice: Any):
    make_connection()
    bob, charlie = make_bob(), make_charlie()
    assert client.get("/api/connections/crm/policy").status_code in (401, 403)
    for user in (bob, charlie):
        client.force_login(user)
        assert client.get("/api/connections/crm/policy").status_code == 403
        assert put_policy(client, "crm", policy([])).status_code == 403
        assert client.get("/approvals/policy/crm/").status_code == 403
    client.force_login(alice)
    assert client.get("/api/connections/nope/policy").status_code == 404
    assert client.get("/approvals/policy/nope/").status_code == 404


def test_admin_edits_the_policy_on_the_connection_page(admin_client: Client):
    connection = make_connection()
    Group.objects.create(name="agents")
    make_user("dora")
    page = admin_client.get("/approvals/policy/crm/")
    assert page.status_code == 200
    form = {
        "rule_rows": "3",
        "rule-0-order": "2",
        "rule-0-tool": "read_*",
        "rule-0-action": "allow",
        "rule-1-order": "1",
        "rule-1-tool": "delete_*",
        "rule-1-action": "hold",
        "rule-1-groups": "agents",
        "rule-2-tool": "",
        "default_action": "deny",
        "grant_users": "dora",
    }
    response = admin_client.post("/approvals/policy/crm/", form)
    assert response.status_code == 302
    page = admin_client.get("/approvals/policy/crm/").content.decode()
    assert page.index('value="delete_*"') < page.index('value="read_*"')
    user = make_user("robot", "agents")
    assert evaluate(connection.pk, user.pk, "delete_x", None).action == "hold"
    assert evaluate(connection.pk, user.pk, "write_x", None).action == "deny"
    # Removing a rule, and a bad one, which is refused with the reason on the page.
    response = admin_client.post(
        "/approvals/policy/crm/",
        {**form, "rule-0-delete": "on", "rule-2-tool": "bad[", "rule-2-action": "deny"},
    )
    assert response.status_code == 400
    assert "without a closing" in response.content.decode()
    response = admin_client.post("/approvals/policy/crm/", {**form, "rule-0-delete": "on"})
    assert response.status_code == 302
    assert evaluate(connection.pk, user.pk, "read_x", None).action == "deny"
