"""Signed checkpoints of the audit chain, kept outside the database.

Every AUDIT_CHECKPOINT_EVERY records and every AUDIT_CHECKPOINT_MINUTES the gateway signs
(sequence, head hash, time) with an Ed25519 key that is not in the database, and writes
the checkpoint as a file in AUDIT_CHECKPOINT_DIR. Whoever can rewrite the database cannot
forge a checkpoint, so `audit_verify` detects rewritten history and a cut tail.
"""

import base64
import json
import logging
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from .canonical import canonical, sha256_hex

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    head_hash: str
    time: str
    key_id: str
    kind: str = "checkpoint"  # or "anchor": where the chain starts after an archive
    signature: str = ""

    def signed_part(self) -> dict[str, object]:
        return {k: v for k, v in asdict(self).items() if k != "signature"}


@dataclass
class Loaded:
    checkpoints: list[Checkpoint]
    anchor: Checkpoint | None
    error: str | None = None


def _directory() -> Path:
    return Path(settings.AUDIT["CHECKPOINT_DIR"])


@cache
def signing_key() -> Ed25519PrivateKey:
    path = Path(settings.AUDIT["SIGNING_KEY_FILE"])
    if not path.exists():
        if not settings.AUDIT["CREATE_SIGNING_KEY"]:
            raise ImproperlyConfigured(f"AUDIT_SIGNING_KEY_FILE {path} does not exist")
        path.parent.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ImproperlyConfigured(f"{path} is not an Ed25519 private key")
    return key


def verify_key() -> Ed25519PublicKey:
    """The public key checkpoints are checked with (AUDIT_VERIFY_KEY_FILE, or the signer's)."""
    path = settings.AUDIT["VERIFY_KEY_FILE"]
    if path:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
        if not isinstance(key, Ed25519PublicKey):
            raise ImproperlyConfigured(f"{path} is not an Ed25519 public key")
        return key
    return signing_key().public_key()


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return sha256_hex(raw)[:16]


def public_key_pem() -> str:
    return (
        verify_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def _sign(checkpoint: Checkpoint) -> Checkpoint:
    signature = signing_key().sign(canonical(checkpoint.signed_part()))
    return Checkpoint(**{**asdict(checkpoint), "signature": base64.b64encode(signature).decode()})


def write(seq: int, head_hash: str, kind: str = "checkpoint") -> Checkpoint:
    checkpoint = _sign(
        Checkpoint(
            seq=seq,
            head_hash=head_hash,
            time=datetime.now(UTC).isoformat(timespec="seconds"),
            key_id=key_id(signing_key().public_key()),
            kind=kind,
        )
    )
    directory = _directory()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{kind}-{seq:012d}.json"
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(asdict(checkpoint), indent=2))
    temporary.replace(path)
    return checkpoint


def load_all() -> Loaded:
    """Every checkpoint and the latest anchor, each checked against the verify key."""
    directory = _directory()
    public_key = verify_key()
    found: list[Checkpoint] = []
    anchor: Checkpoint | None = None
    if not directory.exists():
        return Loaded([], None)
    for path in sorted(directory.glob("*.json")):
        try:
            checkpoint = Checkpoint(**json.loads(path.read_text()))
            public_key.verify(
                base64.b64decode(checkpoint.signature), canonical(checkpoint.signed_part())
            )
        except (ValueError, TypeError, InvalidSignature):
            return Loaded([], None, f"checkpoint file {path.name} is not validly signed")
        if checkpoint.kind == "anchor":
            if anchor is None or checkpoint.seq > anchor.seq:
                anchor = checkpoint
        else:
            found.append(checkpoint)
    if anchor is not None:
        found = [c for c in found if c.seq > anchor.seq]
    return Loaded(found, anchor)


def latest() -> Checkpoint | None:
    loaded = load_all()
    return max(loaded.checkpoints, key=lambda c: c.seq, default=None)
