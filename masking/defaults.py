"""The rules a new installation starts with (created by a migration)."""

from typing import Any

SENSITIVE_KEYS = [
    "password",
    "passwd",
    "secret",
    "client_secret",
    "token",
    "access_token",
    "refresh_token",
    "api_key",
    "apikey",
    "authorization",
    "private_key",
    "ssn",
]

# (name, detector, entity, style): the most specific detectors first, so that on equal
# spans a token is reported as what it is rather than as a generic secret.
BUILTINS = [
    ("Private keys", "private_key", "PRIVATE_KEY", "label"),
    ("JWTs", "jwt", "JWT", "label"),
    ("AWS access key ids", "aws_access_key", "AWS_ACCESS_KEY", "label"),
    ("AWS secret keys", "aws_secret_key", "AWS_SECRET_KEY", "label"),
    ("GitHub tokens", "github_token", "GITHUB_TOKEN", "label"),
    ("GitLab tokens", "gitlab_token", "GITLAB_TOKEN", "label"),
    ("Slack tokens", "slack_token", "SLACK_TOKEN", "label"),
    ("Stripe keys", "stripe_key", "STRIPE_KEY", "label"),
    ("Bearer tokens", "bearer_token", "BEARER_TOKEN", "label"),
    ("Secret assignments", "secret_assignment", "SECRET", "label"),
    ("Email addresses", "email", "EMAIL", "label"),
    ("Payment cards", "payment_card", "CARD", "partial"),
    ("IBANs", "iban", "IBAN", "partial"),
    ("US SSNs", "us_ssn", "US_SSN", "label"),
    ("Phone numbers", "phone", "PHONE", "label"),
    ("IP addresses", "ip_address", "IP_ADDRESS", "label"),
]


def install_defaults(model: Any) -> None:
    """Create the default rules that do not exist yet (by name)."""
    model.objects.get_or_create(
        name="Sensitive keys",
        defaults={"kind": "key_name", "entity": "SECRET", "words": SENSITIVE_KEYS, "order": 10},
    )
    for index, (name, detector, entity, style) in enumerate(BUILTINS):
        model.objects.get_or_create(
            name=name,
            defaults={
                "kind": "builtin",
                "detector": detector,
                "entity": entity,
                "style": style,
                "order": 100 + index,
            },
        )
