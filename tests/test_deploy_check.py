"""`manage.py check --deploy` with production settings reports nothing.

Run in a subprocess, because the settings are read from the environment at start-up.
"""

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Variables of the calling environment that would change what is checked.
_OWN = (
    "DEBUG",
    "SECURE_",
    "SECRET_KEY",
    "ALLOWED_HOSTS",
    "OIDC_",
    "PASSWORD_LOGIN",
    "SESSION_",
    "EMAIL_",
    # The test harness sets this (tests/conftest.py); a deployment never does.
    "DJANGO_ALLOW_ASYNC_UNSAFE",
)


def check_deploy(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(_OWN)}
    production = {
        "DEBUG": "false",
        "SECURE_COOKIES": "true",
        "SECURE_HSTS_SECONDS": "31536000",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "gw.example.com",
        "PUBLIC_URL": "https://gw.example.com",
        "DATA_DIR": str(tmp_path),
        # Production sends approval notifications through a real mail server.
        "EMAIL_HOST": "smtp.example.com",
    }
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "DEBUG"],
        cwd=ROOT,
        env={**clean, **production, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def issues(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The ids of what the check reported, e.g. ["security.W004", "mail.E001"]."""
    return re.findall(r"^\S*: \(([\w.]+)\)", result.stdout + result.stderr, re.MULTILINE)


def test_check_deploy_is_clean_with_production_settings(tmp_path: Path):
    result = check_deploy(tmp_path)
    assert issues(result) == [], result.stdout + result.stderr
    assert result.returncode == 0
    assert "System check identified no issues" in result.stdout


@pytest.mark.xfail(
    strict=True,
    reason="without EMAIL_HOST, settings.MAILERS falls back to the console backend, which"
    " Django 6.1's deploy check reports as mail.E001",
)
def test_check_deploy_is_clean_without_email(tmp_path: Path):
    result = check_deploy(tmp_path, EMAIL_HOST="")
    assert "mail.E001" not in issues(result), result.stdout + result.stderr


@pytest.mark.parametrize("password_login", ["true", "false"])
def test_check_deploy_is_clean_with_single_sign_on(tmp_path: Path, password_login: str):
    result = check_deploy(
        tmp_path,
        OIDC_DISCOVERY_URL="https://idp.example.com/realms/corp",
        OIDC_RP_CLIENT_ID="mcp-gateway",
        OIDC_RP_CLIENT_SECRET="client-secret",
        OIDC_ROLE_MAP="admin=gw-admins,approver=gw-approvers,auditor=gw-auditors",
        PASSWORD_LOGIN=password_login,
        SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto",
    )
    assert issues(result) == [], result.stdout + result.stderr
    assert result.returncode == 0


def test_check_deploy_flags_a_development_setup(tmp_path: Path):
    """The test above means something: the same check does complain about a dev setup."""
    result = check_deploy(tmp_path, DEBUG="true", SECURE_COOKIES="false", SECURE_HSTS_SECONDS="0")
    assert result.returncode != 0
    assert {"security.W018", "security.W012", "security.W004", "security.W008"} <= set(
        issues(result)
    )
