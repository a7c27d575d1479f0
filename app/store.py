"""Configuration and input storage in Redis.

Key layout (all keys start with `col:`; `{u}` user id, `{a}` app id):

| key | type | contains |
|---|---|---|
| `col:collector:{u}:{a}:{id}` | string | CollectorRecord JSON |
| `col:collectors:{u}:{a}` | zset | collector ids, scored by creation time |
| `col:collectors:all` | set | every collector key `u/a/id` (workers load these) |
| `col:source:{mu}/{ma}/{mid}` | set | keys of the collectors watching that model |
| `col:workflow:{u}:{a}:{id}` | string | Workflow JSON |
| `col:workflows:{u}:{a}` | zset | workflow ids, scored by creation time |
| `col:apikey:{sha256}` | string | ApiKeyRecord JSON |
| `col:relations:{u}:{a}` | hash | relation id to ConceptRelation JSON |
| `col:input:{u}:{a}` | hash | input id to input JSON |
| `col:inputs:{u}:{a}` | zset | input ids, scored by arrival sequence |
| `col:revisions:{u}:{a}:{id}` | list | a collector's revisions, newest first |
| `col:changes` | stream | one entry per configuration change, read by workers |

Every configuration write appends to `col:changes` in the same transaction, so a
worker that reads the stream after a full load misses no change.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import orjson
import redis.asyncio as redis
from redis.exceptions import WatchError

from app.models import ApiKeyRecord, CollectorRecord, ConceptRelation, Workflow

logger = logging.getLogger(__name__)

CHANGES_STREAM = "col:changes"
CHANGES_MAX_LEN = 100_000
ALL_COLLECTORS = "col:collectors:all"

ChangeKind = Literal["collector", "workflow", "relations"]

# Stores each new input and its place in the listing order in one atomic step, so a
# crash never leaves an input that ListInputs does not show.
_ADD_INPUTS_SCRIPT = """
local created = {}
for i = 1, #ARGV, 2 do
  if redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then
    local seq = redis.call('INCR', KEYS[3])
    redis.call('ZADD', KEYS[2], seq, ARGV[i])
    created[#created + 1] = 1
  else
    created[#created + 1] = 0
  end
end
return created
"""


class StoreError(Exception):
    """A store operation failed; `retriable` is true for connection problems."""

    retriable = False


class AlreadyExists(StoreError):
    def __init__(self, ids: Sequence[str]) -> None:
        super().__init__(f"already exists: {', '.join(ids)}")
        self.ids = list(ids)


def connect(url: str) -> redis.Redis:
    # RESP2: redis-py 8 over RESP3 can fail the first command after an idle period.
    # The read timeout lets a worker notice a Redis that accepts connections but
    # never replies (hung, or cut off without a reset), so it reports its
    # configuration stale instead of waiting forever. redis-py 8 defaults to 5 s;
    # older versions, which pyproject.toml also allows, have no timeout.
    return redis.Redis.from_url(
        url,
        protocol=2,
        decode_responses=True,
        health_check_interval=10,
        socket_keepalive=True,
        socket_connect_timeout=5,
        socket_timeout=5,
        retry_on_timeout=True,
    )


def _collector_key(user_id: str, app_id: str, collector_id: str) -> str:
    return f"col:collector:{user_id}:{app_id}:{collector_id}"


def _workflow_key(user_id: str, app_id: str, workflow_id: str) -> str:
    return f"col:workflow:{user_id}:{app_id}:{workflow_id}"


def _change(
    kind: ChangeKind, user_id: str, app_id: str, item_id: str, op: str
) -> dict[str, str]:
    return {"kind": kind, "user_id": user_id, "app_id": app_id, "id": item_id, "op": op}


REVISION_FIELDS_HIDDEN = {"post_inputs_key_encrypted", "modified_at"}
MAX_REVISIONS = 1000


def _queue_revision(
    pipe: Any,
    previous: CollectorRecord | None,
    updated: CollectorRecord | None,
    actor: str,
) -> None:
    """Queue a revision entry (who, when, what changed) for a collector change.

    The post-inputs key appears only as "changed", never in any form of its value.
    """
    record = updated or previous
    assert record is not None
    before = previous.model_dump(mode="json") if previous else {}
    after = updated.model_dump(mode="json") if updated else {}
    changes = {}
    for name in sorted(set(before) | set(after)):
        if name in REVISION_FIELDS_HIDDEN or before.get(name) == after.get(name):
            continue
        changes[name] = {"from": before.get(name), "to": after.get(name)}
    if (previous and updated) and (
        previous.post_inputs_key_encrypted != updated.post_inputs_key_encrypted
    ):
        changes["post_inputs_key_id"] = {"from": "(hidden)", "to": "(changed)"}
    if previous is None:
        action = "create"
    elif updated is None:
        action = "delete"
    else:
        action = "update"
    entry = {
        "action": action,
        "actor": actor,
        "at": time.time(),
        "changes": changes,
    }
    key = f"col:revisions:{record.user_id}:{record.app_id}:{record.id}"
    pipe.lpush(key, orjson.dumps(entry).decode())
    pipe.ltrim(key, 0, MAX_REVISIONS - 1)


class Store:
    """Async access to everything the service keeps in Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    async def close(self) -> None:
        await self.redis.aclose()

    # --- collectors -------------------------------------------------------------

    async def create_collectors(
        self, records: Sequence[CollectorRecord], actor: str = ""
    ) -> None:
        """Create all the collectors, or none when any id already exists."""
        keys = [_collector_key(r.user_id, r.app_id, r.id) for r in records]
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(*keys)
                    existing = await pipe.mget(keys)
                    taken = [r.id for r, value in zip(records, existing) if value]
                    if taken:
                        raise AlreadyExists(taken)
                    pipe.multi()
                    for record in records:
                        self._queue_collector_write(pipe, record, previous=None)
                        _queue_revision(pipe, None, record, actor)
                    await pipe.execute()
                    return
                except WatchError:
                    continue

    async def replace_collectors(
        self,
        pairs: Sequence[tuple[CollectorRecord, CollectorRecord]],
        actor: str = "",
    ) -> bool:
        """Replace each (previous, updated) pair; False when one changed meanwhile."""
        keys = [_collector_key(p.user_id, p.app_id, p.id) for p, _ in pairs]
        async with self.redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(*keys)
                current = await pipe.mget(keys)
                for (previous, _), value in zip(pairs, current):
                    if (
                        value is None
                        or CollectorRecord.model_validate_json(value) != previous
                    ):
                        return False
                pipe.multi()
                for previous, updated in pairs:
                    self._queue_collector_write(pipe, updated, previous=previous)
                    _queue_revision(pipe, previous, updated, actor)
                await pipe.execute()
                return True
            except WatchError:
                return False

    def _queue_collector_write(
        self, pipe: Any, record: CollectorRecord, previous: CollectorRecord | None
    ) -> None:
        pipe.set(
            _collector_key(record.user_id, record.app_id, record.id),
            record.model_dump_json(),
        )
        pipe.zadd(
            f"col:collectors:{record.user_id}:{record.app_id}",
            {record.id: record.created_at.timestamp()},
        )
        pipe.sadd(ALL_COLLECTORS, record.key)
        if previous is not None and previous.source_key != record.source_key:
            pipe.srem(f"col:source:{previous.source_key}", previous.key)
        pipe.sadd(f"col:source:{record.source_key}", record.key)
        op = "create" if previous is None else "update"
        pipe.xadd(
            CHANGES_STREAM,
            _change("collector", record.user_id, record.app_id, record.id, op),
            maxlen=CHANGES_MAX_LEN,
            approximate=True,
        )

    async def get_collector(
        self, user_id: str, app_id: str, collector_id: str
    ) -> CollectorRecord | None:
        value = await self.redis.get(_collector_key(user_id, app_id, collector_id))
        return CollectorRecord.model_validate_json(value) if value else None

    async def get_collectors_by_key(
        self, keys: Sequence[str]
    ) -> list[CollectorRecord | None]:
        """Load collectors by their `user/app/id` keys, None for deleted ones."""
        if not keys:
            return []
        redis_keys = [_collector_key(*key.split("/", 2)) for key in keys]
        values = await self.redis.mget(redis_keys)
        return [CollectorRecord.model_validate_json(v) if v else None for v in values]

    async def list_collectors(
        self, user_id: str, app_id: str, page: int, per_page: int
    ) -> list[CollectorRecord]:
        start = (page - 1) * per_page
        ids = await self.redis.zrange(
            f"col:collectors:{user_id}:{app_id}", start, start + per_page - 1
        )
        keys = [f"{user_id}/{app_id}/{collector_id}" for collector_id in ids]
        return [r for r in await self.get_collectors_by_key(keys) if r is not None]

    async def list_app_collectors(
        self, user_id: str, app_id: str
    ) -> list[CollectorRecord]:
        """Return every collector of one app, in creation order."""
        ids = await self.redis.zrange(f"col:collectors:{user_id}:{app_id}", 0, -1)
        keys = [f"{user_id}/{app_id}/{collector_id}" for collector_id in ids]
        return [r for r in await self.get_collectors_by_key(keys) if r is not None]

    async def all_collector_keys(self) -> list[str]:
        return sorted(await self.redis.smembers(ALL_COLLECTORS))

    async def delete_collectors(
        self,
        user_id: str,
        app_id: str,
        collector_ids: Sequence[str] | None,
        actor: str = "",
    ) -> list[str]:
        """Delete the given collectors (all of the app's when None); return the ids
        that existed."""
        if collector_ids is None:
            collector_ids = await self.redis.zrange(
                f"col:collectors:{user_id}:{app_id}", 0, -1
            )
        keys = [f"{user_id}/{app_id}/{collector_id}" for collector_id in collector_ids]
        records = [r for r in await self.get_collectors_by_key(keys) if r is not None]
        async with self.redis.pipeline(transaction=True) as pipe:
            for record in records:
                pipe.delete(_collector_key(user_id, app_id, record.id))
                pipe.zrem(f"col:collectors:{user_id}:{app_id}", record.id)
                pipe.srem(ALL_COLLECTORS, record.key)
                pipe.srem(f"col:source:{record.source_key}", record.key)
                _queue_revision(pipe, record, None, actor)
                pipe.xadd(
                    CHANGES_STREAM,
                    _change("collector", user_id, app_id, record.id, "delete"),
                    maxlen=CHANGES_MAX_LEN,
                    approximate=True,
                )
            await pipe.execute()
        return [record.id for record in records]

    async def collectors_for_source(self, model_source_key: str) -> list[str]:
        return sorted(await self.redis.smembers(f"col:source:{model_source_key}"))

    async def list_revisions(
        self, user_id: str, app_id: str, collector_id: str, page: int, per_page: int
    ) -> list[dict[str, Any]]:
        """Return a collector's revisions, newest first."""
        start = (page - 1) * per_page
        key = f"col:revisions:{user_id}:{app_id}:{collector_id}"
        values = await self.redis.lrange(key, start, start + per_page - 1)
        return [orjson.loads(value) for value in values]

    # --- workflows --------------------------------------------------------------

    async def create_workflows(
        self, user_id: str, app_id: str, workflows: Sequence[Workflow]
    ) -> None:
        keys = [_workflow_key(user_id, app_id, w.id) for w in workflows]
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(*keys)
                    existing = await pipe.mget(keys)
                    taken = [w.id for w, value in zip(workflows, existing) if value]
                    if taken:
                        raise AlreadyExists(taken)
                    pipe.multi()
                    for workflow in workflows:
                        self._queue_workflow_write(
                            pipe, user_id, app_id, workflow, "create"
                        )
                    await pipe.execute()
                    return
                except WatchError:
                    continue

    async def put_workflows(
        self, user_id: str, app_id: str, workflows: Sequence[Workflow]
    ) -> None:
        """Write workflows that already exist (after a patch)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            for workflow in workflows:
                self._queue_workflow_write(pipe, user_id, app_id, workflow, "update")
            await pipe.execute()

    def _queue_workflow_write(
        self, pipe: Any, user_id: str, app_id: str, workflow: Workflow, op: str
    ) -> None:
        created = (
            workflow.created_at.timestamp() if workflow.created_at else time.time()
        )
        pipe.set(
            _workflow_key(user_id, app_id, workflow.id), workflow.model_dump_json()
        )
        pipe.zadd(f"col:workflows:{user_id}:{app_id}", {workflow.id: created})
        pipe.xadd(
            CHANGES_STREAM,
            _change("workflow", user_id, app_id, workflow.id, op),
            maxlen=CHANGES_MAX_LEN,
            approximate=True,
        )

    async def get_workflow(
        self, user_id: str, app_id: str, workflow_id: str
    ) -> Workflow | None:
        value = await self.redis.get(_workflow_key(user_id, app_id, workflow_id))
        return Workflow.model_validate_json(value) if value else None

    async def get_workflows(
        self, user_id: str, app_id: str, workflow_ids: Iterable[str]
    ) -> dict[str, Workflow]:
        ids = sorted(set(workflow_ids))
        if not ids:
            return {}
        values = await self.redis.mget([_workflow_key(user_id, app_id, i) for i in ids])
        return {i: Workflow.model_validate_json(v) for i, v in zip(ids, values) if v}

    async def list_workflows(
        self, user_id: str, app_id: str, page: int, per_page: int
    ) -> list[Workflow]:
        start = (page - 1) * per_page
        ids = await self.redis.zrange(
            f"col:workflows:{user_id}:{app_id}", start, start + per_page - 1
        )
        found = await self.get_workflows(user_id, app_id, ids)
        return [found[i] for i in ids if i in found]

    async def delete_workflows(
        self, user_id: str, app_id: str, workflow_ids: Sequence[str] | None
    ) -> list[str]:
        if workflow_ids is None:
            workflow_ids = await self.redis.zrange(
                f"col:workflows:{user_id}:{app_id}", 0, -1
            )
        found = await self.get_workflows(user_id, app_id, workflow_ids)
        async with self.redis.pipeline(transaction=True) as pipe:
            for workflow_id in found:
                pipe.delete(_workflow_key(user_id, app_id, workflow_id))
                pipe.zrem(f"col:workflows:{user_id}:{app_id}", workflow_id)
                pipe.xadd(
                    CHANGES_STREAM,
                    _change("workflow", user_id, app_id, workflow_id, "delete"),
                    maxlen=CHANGES_MAX_LEN,
                    approximate=True,
                )
            await pipe.execute()
        return list(found)

    # --- API keys ---------------------------------------------------------------

    async def put_api_key(self, record: ApiKeyRecord) -> None:
        await self.redis.set(f"col:apikey:{record.key_hash}", record.model_dump_json())

    async def get_api_key(self, key_hash: str) -> ApiKeyRecord | None:
        value = await self.redis.get(f"col:apikey:{key_hash}")
        return ApiKeyRecord.model_validate_json(value) if value else None

    # --- concept relations ------------------------------------------------------

    async def put_relations(
        self, user_id: str, app_id: str, relations: Sequence[ConceptRelation]
    ) -> None:
        key = f"col:relations:{user_id}:{app_id}"
        async with self.redis.pipeline(transaction=True) as pipe:
            for relation in relations:
                pipe.hset(key, relation.id, relation.model_dump_json())
            pipe.xadd(
                CHANGES_STREAM,
                _change("relations", user_id, app_id, "", "update"),
                maxlen=CHANGES_MAX_LEN,
                approximate=True,
            )
            await pipe.execute()

    async def list_relations(self, user_id: str, app_id: str) -> list[ConceptRelation]:
        values = await self.redis.hgetall(f"col:relations:{user_id}:{app_id}")
        relations = [ConceptRelation.model_validate_json(v) for v in values.values()]
        return sorted(relations, key=lambda relation: relation.id)

    async def delete_relations(
        self, user_id: str, app_id: str, relation_ids: Sequence[str]
    ) -> int:
        key = f"col:relations:{user_id}:{app_id}"
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(key, *relation_ids)
            pipe.xadd(
                CHANGES_STREAM,
                _change("relations", user_id, app_id, "", "update"),
                maxlen=CHANGES_MAX_LEN,
                approximate=True,
            )
            deleted, _ = await pipe.execute()
        return int(deleted)

    # --- change stream ----------------------------------------------------------

    async def last_change_id(self) -> str:
        """Return the id of the newest change, or "0-0" when there is none."""
        entries = await self.redis.xrevrange(CHANGES_STREAM, count=1)
        return entries[0][0] if entries else "0-0"

    async def first_change_id(self) -> str | None:
        entries = await self.redis.xrange(CHANGES_STREAM, count=1)
        return entries[0][0] if entries else None

    async def read_changes(
        self, after_id: str, block_ms: int, count: int = 1000
    ) -> list[tuple[str, dict[str, str]]]:
        result = await self.redis.xread(
            {CHANGES_STREAM: after_id}, count=count, block=block_ms
        )
        if not result:
            return []
        _, entries = result[0]
        return list(entries)

    # --- inputs (the destination app this service hosts) ------------------------

    async def add_inputs(
        self, user_id: str, app_id: str, inputs: Sequence[dict[str, Any]]
    ) -> list[bool]:
        """Store inputs by id; an id already held is left as it is. Return, per input,
        whether it was new."""
        if not inputs:
            return []
        keys = [
            f"col:input:{user_id}:{app_id}",
            f"col:inputs:{user_id}:{app_id}",
            f"col:inputs-seq:{user_id}:{app_id}",
        ]
        arguments: list[str] = []
        for item in inputs:
            arguments += [item["id"], orjson.dumps(item).decode()]
        flags = await self.redis.eval(_ADD_INPUTS_SCRIPT, len(keys), *keys, *arguments)
        return [bool(flag) for flag in flags]

    async def get_input(
        self, user_id: str, app_id: str, input_id: str
    ) -> dict[str, Any] | None:
        value = await self.redis.hget(f"col:input:{user_id}:{app_id}", input_id)
        return orjson.loads(value) if value else None

    async def get_inputs(
        self, user_id: str, app_id: str, input_ids: Sequence[str]
    ) -> list[dict[str, Any] | None]:
        """Load inputs by id, None for the ids the app does not hold."""
        if not input_ids:
            return []
        values = await self.redis.hmget(f"col:input:{user_id}:{app_id}", input_ids)
        return [orjson.loads(v) if v else None for v in values]

    async def missing_inputs(
        self, user_id: str, app_id: str, input_ids: Sequence[str]
    ) -> list[str]:
        """Return the ids among `input_ids` that the app does not hold."""
        key = f"col:input:{user_id}:{app_id}"
        async with self.redis.pipeline(transaction=False) as pipe:
            for input_id in input_ids:
                pipe.hexists(key, input_id)
            flags = await pipe.execute()
        return [i for i, exists in zip(input_ids, flags) if not exists]

    async def list_inputs(
        self, user_id: str, app_id: str, page: int, per_page: int
    ) -> list[dict[str, Any]]:
        start = (page - 1) * per_page
        ids = await self.redis.zrange(
            f"col:inputs:{user_id}:{app_id}", start, start + per_page - 1
        )
        if not ids:
            return []
        values = await self.redis.hmget(f"col:input:{user_id}:{app_id}", ids)
        return [orjson.loads(v) for v in values if v]

    async def count_inputs(self, user_id: str, app_id: str) -> int:
        return int(await self.redis.hlen(f"col:input:{user_id}:{app_id}"))

    async def delete_inputs(
        self, user_id: str, app_id: str, input_ids: Sequence[str] | None
    ) -> int:
        data_key = f"col:input:{user_id}:{app_id}"
        order_key = f"col:inputs:{user_id}:{app_id}"
        if input_ids is None:
            count = await self.count_inputs(user_id, app_id)
            await self.redis.delete(data_key, order_key)
            return count
        if not input_ids:
            return 0
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(data_key, *input_ids)
            pipe.zrem(order_key, *input_ids)
            deleted, _ = await pipe.execute()
        return int(deleted)
