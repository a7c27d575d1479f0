"""Creating API keys from the command line and the tests."""

from __future__ import annotations

from app.models import ApiKeyRecord
from app.security import hash_api_key, new_api_key, validate_scopes
from app.settings import Settings
from app.store import Store, connect


async def create_api_key(
    settings: Settings, user_id: str, app_id: str, scopes: list[str], pat: bool
) -> str:
    """Create a key, store its hash with its owner and scopes, and return the key."""
    validate_scopes(scopes)
    key = new_api_key()
    record = ApiKeyRecord(
        key_hash=hash_api_key(key),
        user_id=user_id,
        app_id="" if pat else app_id,
        scopes=tuple(scopes),
        kind="pat" if pat else "app_key",
    )
    store = Store(connect(settings.redis_url))
    try:
        await store.put_api_key(record)
    finally:
        await store.close()
    return key
