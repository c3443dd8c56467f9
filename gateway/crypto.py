"""Encryption at rest for upstream credentials.

The key lives outside the database (GATEWAY_ENCRYPTION_KEY, GATEWAY_ENCRYPTION_KEY_FILE,
or the embedded default's key file in DATA_DIR). Several keys allow rotation.
"""

import json
from functools import cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


@cache
def _fernet() -> MultiFernet:
    try:
        return MultiFernet([Fernet(key.encode()) for key in settings.GATEWAY_ENCRYPTION_KEYS])
    except ValueError as exc:
        raise ImproperlyConfigured(
            f"GATEWAY_ENCRYPTION_KEY is not a valid Fernet key: {exc}"
        ) from None


def encrypt_json(value: object) -> str:
    return _fernet().encrypt(json.dumps(value).encode()).decode()


def decrypt_json(ciphertext: str) -> object:
    try:
        return json.loads(_fernet().decrypt(ciphertext.encode()))
    except InvalidToken:
        raise ImproperlyConfigured(
            "stored credentials cannot be decrypted with GATEWAY_ENCRYPTION_KEY"
        ) from None
