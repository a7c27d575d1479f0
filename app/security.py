"""API keys (stored as hashes) and encryption of credentials for other services.

Keys that authenticate callers of this service are random 32-character hex tokens;
Redis holds only their SHA-256 digest, which is enough because the tokens carry 128
bits of entropy. Credentials this service must present elsewhere (a collector's
post-inputs key, a remote model's key) are encrypted with Fernet under the operator's
secret, because they must stay usable.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from app.settings import Settings

logger = logging.getLogger(__name__)

# Scopes implied by another scope: an Add implies its Get, a Delete its Add and Get.
ALL_SCOPES = (
    "Apps:Get",
    "Collectors:Add",
    "Collectors:Get",
    "Collectors:Delete",
    "Inputs:Add",
    "Inputs:Get",
    "Inputs:Delete",
    "Workflows:Add",
    "Workflows:Get",
    "Workflows:Delete",
    "Concepts:Add",
    "Concepts:Get",
    "Concepts:Delete",
    "Annotations:Add",
    "Annotations:Get",
    "Models:Get",
    "Predict",
)


def new_api_key() -> str:
    return secrets.token_hex(16)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def digests_equal(left: str, right: str) -> bool:
    return hmac.compare_digest(left.encode(), right.encode())


def expand_scopes(scopes: tuple[str, ...] | list[str]) -> frozenset[str]:
    """Return the scopes a key holds, with the implied ones added."""
    held = set(scopes)
    if "All" in held:
        return frozenset((*ALL_SCOPES, "All"))
    for scope in list(held):
        resource, _, verb = scope.partition(":")
        if verb == "Delete":
            held.update({f"{resource}:Add", f"{resource}:Get"})
        elif verb == "Add":
            held.add(f"{resource}:Get")
    return frozenset(held)


def validate_scopes(scopes: list[str]) -> list[str]:
    """Return the scopes, or raise ValueError naming the unknown ones."""
    unknown = [scope for scope in scopes if scope not in (*ALL_SCOPES, "All")]
    if unknown:
        raise ValueError(
            f"unknown scopes {', '.join(unknown)}; known scopes are All, "
            + ", ".join(ALL_SCOPES)
        )
    return scopes


class SecretBox:
    """Encrypts and decrypts credentials with Fernet (AES-128-CBC and HMAC-SHA256)."""

    def __init__(self, secret: str) -> None:
        # Any operator string works: it is stretched to a Fernet key with SHA-256.
        digest = hashlib.sha256(secret.encode()).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(digest))

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken as error:
            raise ValueError(
                "cannot decrypt a stored credential: COLLECTORS_SECRET_KEY differs "
                "from the secret it was encrypted with"
            ) from error


def load_secret_box(settings: Settings) -> SecretBox:
    """Build the SecretBox from COLLECTORS_SECRET_KEY, or from a local key file.

    Without COLLECTORS_SECRET_KEY a random secret is created once in
    COLLECTORS_SECRET_KEY_FILE (mode 0600), which suits one machine; processes on
    several hosts must share COLLECTORS_SECRET_KEY.
    """
    if settings.secret_key:
        return SecretBox(settings.secret_key)
    path = Path(settings.secret_key_file)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_urlsafe(32))
        try:
            # A hard link fails when another process created the file first, so
            # every process ends up reading the same secret.
            os.link(temporary, path)
            logger.warning(
                "COLLECTORS_SECRET_KEY is not set; created a local secret in %s", path
            )
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
    return SecretBox(path.read_text().strip())
