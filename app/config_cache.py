"""The worker's in-memory copy of the collector configuration.

A worker loads every collector, the workflows they name and their apps' concept
relations once, then follows the `col:changes` stream in Redis and reloads only what
changed. Readers see an immutable `ConfigSnapshot` that is swapped as a whole, so the
hot path makes no Redis round trip and never reads a half-applied change.

When Redis is unreachable the worker keeps the snapshot it has, reports itself stale
and catches up (with a full reload) when Redis returns. A worker that never loaded a
snapshot waits in `wait_ready` and does not consume.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from redis.exceptions import RedisError

from app.models import CollectorRecord, ConceptRelation, Workflow
from app.security import SecretBox
from app.store import Store
from rules.errors import RuleConfigError
from rules.sampling import digest_limit
from rules.stateful import StatefulRule, stateful_rules
from rules.workflow import CompiledWorkflow, compile_workflow

logger = logging.getLogger(__name__)

AppKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class CollectorView:
    """A collector with everything the agents need, decoded and compiled."""

    record: CollectorRecord
    key: str
    post_inputs_key: str
    pre_queue: CompiledWorkflow | None
    post_queue: CompiledWorkflow | None
    relations: tuple[Mapping[str, Any], ...]
    # Names a workflow that does not exist (or does not compile): collects nothing.
    broken_reason: str = ""
    # Quota and dedupe nodes of both workflows, applied right before posting.
    stateful_rules: tuple[StatefulRule, ...] = ()
    # The random sample by input id, prepared for stage one: an input is kept when
    # sha256(sample_seed_prefix + input id).digest() < sample_limit (see
    # rules/sampling.py).
    sample_seed_prefix: bytes = field(init=False)
    sample_limit: bytes = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sample_seed_prefix", f"{self.key}/".encode())
        object.__setattr__(
            self, "sample_limit", digest_limit(self.record.pre_queue_random_sample)
        )

    @property
    def pre_queue_is_remote(self) -> bool:
        return self.pre_queue is not None and bool(self.pre_queue.remote_node_ids)


@dataclass(frozen=True, slots=True)
class ConfigSnapshot:
    by_key: Mapping[str, CollectorView] = field(
        default_factory=lambda: MappingProxyType({})
    )
    by_source: Mapping[str, tuple[CollectorView, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    loaded_at: float = 0.0


def _index_by_source(
    views: Iterable[CollectorView],
) -> dict[str, tuple[CollectorView, ...]]:
    grouped: defaultdict[str, list[CollectorView]] = defaultdict(list)
    for view in views:
        grouped[view.record.source_key].append(view)
    return {
        source: tuple(sorted(items, key=lambda v: v.key))
        for source, items in grouped.items()
    }


class ConfigCache:
    """Keeps a ConfigSnapshot current by following the change stream."""

    def __init__(
        self, store: Store, secret_box: SecretBox, poll_interval_s: float = 0.25
    ) -> None:
        self._store = store
        self._secret_box = secret_box
        self._poll_interval_s = poll_interval_s
        self.snapshot = ConfigSnapshot()
        self._ready = asyncio.Event()
        self._records: dict[str, CollectorRecord] = {}
        self._workflows: dict[tuple[str, str, str], Workflow] = {}
        self._compiled: dict[tuple[str, str, str], CompiledWorkflow | str] = {}
        self._relations: dict[AppKey, tuple[Mapping[str, Any], ...]] = {}
        self._views: dict[str, CollectorView] = {}
        self._dirty_apps: set[AppKey] = set()
        self._last_change_id = "0-0"
        self.stale_since: float | None = None
        self.reloads = 0

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def wait_ready(self) -> None:
        await self._ready.wait()

    async def run(self) -> None:
        """Load the configuration and follow changes until cancelled."""
        while True:
            try:
                await self._full_load()
                await self._follow_changes()
            except (RedisError, OSError) as error:
                if self.stale_since is None:
                    self.stale_since = time.monotonic()
                    logger.warning(
                        "config store unreachable, keeping the last configuration: %s",
                        error,
                    )
                await asyncio.sleep(1.0)

    async def _full_load(self) -> None:
        # The change id is read before the load, so a change made during the load
        # is applied again afterwards rather than missed.
        last_change_id = await self._store.last_change_id()
        keys = await self._store.all_collector_keys()
        records = [r for r in await self._store.get_collectors_by_key(keys) if r]
        records_by_app: dict[AppKey, list[CollectorRecord]] = {}
        for record in records:
            app_key = (record.user_id, record.app_id)
            records_by_app.setdefault(app_key, []).append(record)
        apps = set(records_by_app)
        workflows: dict[tuple[str, str, str], Workflow] = {}
        relations: dict[AppKey, tuple[Mapping[str, Any], ...]] = {}
        for (user_id, app_id), app_records in records_by_app.items():
            workflow_ids = _workflow_ids(app_records)
            for workflow_id, workflow in (
                await self._store.get_workflows(user_id, app_id, workflow_ids)
            ).items():
                workflows[(user_id, app_id, workflow_id)] = workflow
            relations[(user_id, app_id)] = await self._load_relations(user_id, app_id)

        self._records = {r.key: r for r in records}
        self._workflows = workflows
        self._compiled = {}
        self._relations = relations
        self._views = {}
        self._dirty_apps = set(apps)
        self._last_change_id = last_change_id
        self._publish()
        self.reloads += 1
        if self.stale_since is not None:
            logger.info(
                "config store reachable again after %.1f s",
                time.monotonic() - self.stale_since,
            )
            self.stale_since = None
        logger.info(
            "loaded configuration: %d collectors, %d workflows",
            len(records),
            len(workflows),
        )
        self._ready.set()

    async def _load_relations(
        self, user_id: str, app_id: str
    ) -> tuple[Mapping[str, Any], ...]:
        relations = await self._store.list_relations(user_id, app_id)
        return tuple(relation.model_dump() for relation in relations)

    async def _follow_changes(self) -> None:
        block_ms = max(1, int(self._poll_interval_s * 1000))
        while True:
            entries = await self._store.read_changes(
                self._last_change_id, block_ms=block_ms
            )
            if not entries:
                continue
            for entry_id, change in entries:
                await self._apply_change(change)
                self._last_change_id = entry_id
            self._publish()

    async def _apply_change(self, change: Mapping[str, str]) -> None:
        kind, user_id, app_id = change["kind"], change["user_id"], change["app_id"]
        app = (user_id, app_id)
        self._dirty_apps.add(app)
        if kind == "collector":
            key = f"{user_id}/{app_id}/{change['id']}"
            record = await self._store.get_collector(user_id, app_id, change["id"])
            if record is None:
                self._records.pop(key, None)
                return
            self._records[key] = record
            missing = [
                wid
                for wid in _workflow_ids([record])
                if (user_id, app_id, wid) not in self._workflows
            ]
            for workflow_id, workflow in (
                await self._store.get_workflows(user_id, app_id, missing)
            ).items():
                self._workflows[(user_id, app_id, workflow_id)] = workflow
            if app not in self._relations:
                self._relations[app] = await self._load_relations(user_id, app_id)
        elif kind == "workflow":
            workflow_key = (user_id, app_id, change["id"])
            workflow = await self._store.get_workflow(*workflow_key)
            self._compiled.pop(workflow_key, None)
            if workflow is None:
                self._workflows.pop(workflow_key, None)
            else:
                self._workflows[workflow_key] = workflow
        elif kind == "relations":
            self._relations[app] = await self._load_relations(user_id, app_id)
        else:
            logger.warning("ignoring a change of unknown kind %r", kind)

    def _publish(self) -> None:
        """Rebuild the views of the apps that changed and swap in a new snapshot."""
        for key in [
            k
            for k, v in self._views.items()
            if (v.record.user_id, v.record.app_id) in self._dirty_apps
        ]:
            del self._views[key]
        for key, record in self._records.items():
            if key not in self._views:
                self._views[key] = self._view(record)
        self._dirty_apps.clear()
        views = list(self._views.values())
        self.snapshot = ConfigSnapshot(
            by_key=MappingProxyType({view.key: view for view in views}),
            by_source=MappingProxyType(_index_by_source(views)),
            loaded_at=time.time(),
        )

    def _compile(
        self, user_id: str, app_id: str, workflow_id: str
    ) -> CompiledWorkflow | str:
        """Return the compiled workflow, or a reason why there is none."""
        workflow_key = (user_id, app_id, workflow_id)
        cached = self._compiled.get(workflow_key)
        if cached is not None:
            return cached
        workflow = self._workflows.get(workflow_key)
        if workflow is None:
            result: CompiledWorkflow | str = f"workflow {workflow_id!r} does not exist"
        else:
            try:
                definition = workflow.model_dump(exclude_none=True)
                result = compile_workflow(self._decrypt_model_keys(definition))
            except (RuleConfigError, ValueError) as error:
                result = f"workflow {workflow_id!r} is invalid: {error}"
        self._compiled[workflow_key] = result
        return result

    def _decrypt_model_keys(self, definition: dict[str, Any]) -> dict[str, Any]:
        for node in definition.get("nodes", []):
            params = node.get("model", {}).get("output_info", {}).get("params", {})
            if params.get("api_key_encrypted"):
                params["api_key"] = self._secret_box.decrypt(
                    params.pop("api_key_encrypted")
                )
        return definition

    def _view(self, record: CollectorRecord) -> CollectorView:
        reasons: list[str] = []
        compiled: list[CompiledWorkflow | None] = []
        for workflow_id in (
            record.pre_queue_workflow_id,
            record.post_queue_workflow_id,
        ):
            if not workflow_id:
                compiled.append(None)
                continue
            result = self._compile(record.user_id, record.app_id, workflow_id)
            if isinstance(result, str):
                reasons.append(result)
                compiled.append(None)
            else:
                compiled.append(result)
        try:
            key = (
                self._secret_box.decrypt(record.post_inputs_key_encrypted)
                if record.post_inputs_key_encrypted
                else ""
            )
        except ValueError as error:
            reasons.append(str(error))
            key = ""
        view = CollectorView(
            record=record,
            key=record.key,
            post_inputs_key=key,
            pre_queue=compiled[0],
            post_queue=compiled[1],
            relations=self._relations.get((record.user_id, record.app_id), ()),
            broken_reason="; ".join(reasons),
            stateful_rules=tuple(
                rule
                for workflow in compiled
                if workflow is not None
                for rule in stateful_rules(workflow.nodes.values())
            ),
        )
        if view.broken_reason:
            logger.warning(
                "collector %s collects nothing: %s", view.key, view.broken_reason
            )
        return view


async def load_view(
    store: Store, secret_box: SecretBox, user_id: str, app_id: str, collector_id: str
) -> CollectorView | None:
    """Build the view of one collector straight from Redis (for previews)."""
    record = await store.get_collector(user_id, app_id, collector_id)
    if record is None:
        return None
    cache = ConfigCache(store, secret_box)
    cache._records = {record.key: record}
    for workflow_id, workflow in (
        await store.get_workflows(user_id, app_id, _workflow_ids([record]))
    ).items():
        cache._workflows[(user_id, app_id, workflow_id)] = workflow
    cache._relations[(user_id, app_id)] = await cache._load_relations(user_id, app_id)
    return cache._view(record)


def _workflow_ids(records: Iterable[CollectorRecord]) -> set[str]:
    ids: set[str] = set()
    for record in records:
        ids.update(
            w
            for w in (record.pre_queue_workflow_id, record.post_queue_workflow_id)
            if w
        )
    return ids


def relations_as_dicts(
    relations: Iterable[ConceptRelation],
) -> tuple[dict[str, Any], ...]:
    return tuple(relation.model_dump() for relation in relations)
