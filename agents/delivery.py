"""Stage two: from queued candidates to inputs posted at the destination.

For each collector's items: drop them when the collector was deleted or paused
since they were queued, run a deferred pre-queue workflow (one with remote models),
run the post-queue workflow on the original input, and post the survivors. Different
collectors are delivered concurrently, so one slow destination delays the others
only until its requests time out or its inline retries give up; after that, the
inputs move to the retry topic (see agents/app.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agents.errors import INFRASTRUCTURE_ERRORS
from agents.stateful import StatefulGate
from agents.stats import WorkerStats
from app.config_cache import CollectorView, ConfigSnapshot
from app.destination import MAX_INPUTS_PER_REQUEST, DeliveryError, Destination
from app.remote_models import RemoteModelError
from rules.context import Data, EvalContext
from rules.workflow import CompiledWorkflow, remote_nodes

logger = logging.getLogger(__name__)

# Calls one remote model node on an input and returns its output data.
RemoteModelCall = Callable[[Mapping[str, Any], Mapping[str, Any]], Awaitable[Data]]


REMOTE_MODEL_RETRY_DELAYS_S = (0.2, 1.0)


@dataclass(frozen=True, slots=True)
class FailedDelivery:
    """Inputs of one collector that could not be delivered.

    `payload_kind` is "items" for queue items that failed before the POST (the
    payload can go back on the queue topic) and "inputs" for built destination
    inputs whose POST failed (the payload can go to the retry topic).
    """

    collector_key: str
    items: list[dict[str, Any]]
    reason: str
    attempts: int
    code: str = "COLLECTOR_POST_INPUT_FAILED"
    retriable: bool = False
    payload_kind: str = "inputs"


# One collector's destination inputs (None when none are left) and its failures.
_Prepared = tuple[
    tuple[CollectorView, list[dict[str, Any]]] | None, list[FailedDelivery]
]


class Deliverer:
    def __init__(
        self,
        destination: Destination,
        stats: WorkerStats,
        call_remote_model: RemoteModelCall | None = None,
        inline_give_up_s: float = 5.0,
        gate: StatefulGate | None = None,
        merge_posts: bool = True,
    ) -> None:
        self.gate = gate
        # Whether collectors that post to the same app with the same key share
        # requests (see `deliver`).
        self.merge_posts = merge_posts
        # How long the deliver agent retries a failing POST before it moves the
        # inputs to the retry topic: the bound on how long one failing destination
        # holds up the other collectors of a batch (plus one request timeout).
        self.inline_give_up_s = inline_give_up_s
        self.destination = destination
        self.stats = stats
        self.call_remote_model = call_remote_model
        # Requests started and the inputs in them, since the worker started.
        self.requests_started = 0
        self.inputs_requested = 0

    def request_counts(self) -> tuple[int, int]:
        """Return the requests started since the worker started, and their inputs."""
        return self.requests_started, self.inputs_requested

    async def deliver(
        self, batches: Mapping[str, Sequence[dict[str, Any]]], snapshot: ConfigSnapshot
    ) -> list[FailedDelivery]:
        """Deliver every collector's items; return the deliveries that failed for
        good, for the dead-letter topic.

        Each collector's items first pass its checks and workflows. The survivors of
        collectors that post to the same app with the same key then go out together,
        in requests of at most 128 inputs, when `merge_posts` is set: the funnel and
        the failures stay per collector.
        """
        failures: list[FailedDelivery] = []
        ready: list[tuple[CollectorView, list[dict[str, Any]]]] = []
        waiting = []
        for key, items in batches.items():
            view = snapshot.by_key.get(key)
            if self._may_wait(view, items):
                waiting.append(self._prepare_contained(key, items, view))
                continue
            # Nothing in this preparation awaits I/O, so running it here costs no
            # task and delays no other collector.
            prepared, prepare_failures = await self._prepare_contained(key, items, view)
            if prepared:
                ready.append(prepared)
            failures.extend(prepare_failures)
        # Each collector that waits on Redis or remote models is posted as soon as
        # it is ready, in requests of its own, so that it delays no other post.
        outcomes = await asyncio.gather(
            self._post_all(ready), *map(self._prepare_and_post, waiting)
        )
        for outcome in outcomes:
            failures.extend(outcome)
        return failures

    async def _prepare_and_post(
        self, preparation: Awaitable[_Prepared]
    ) -> list[FailedDelivery]:
        prepared, failures = await preparation
        if prepared:
            failures = [*failures, *await self._post_all([prepared])]
        return failures

    async def _post_all(
        self, ready: Sequence[tuple[CollectorView, list[dict[str, Any]]]]
    ) -> list[FailedDelivery]:
        chunks = self._requests(ready)
        self.requests_started += len(chunks)
        self.inputs_requested += sum(map(len, chunks))
        posts = [self._post_entries(chunk, self.inline_give_up_s) for chunk in chunks]
        return [
            failure
            for post_failures in await asyncio.gather(*posts)
            for failure in post_failures
        ]

    def _may_wait(
        self, view: CollectorView | None, items: Sequence[dict[str, Any]]
    ) -> bool:
        """Tell whether preparing the collector's items may wait on I/O: a quota or
        dedupe rule (Redis) or a workflow with remote models."""
        if view is None or not view.record.active:
            return False
        if view.stateful_rules and self.gate is not None:
            return True
        if view.post_queue is not None and view.post_queue.remote_node_ids:
            return True
        return (
            view.pre_queue is not None
            and bool(view.pre_queue.remote_node_ids)
            and any(item.get("pre_queue_pending") for item in items)
        )

    def _requests(
        self, ready: Sequence[tuple[CollectorView, list[dict[str, Any]]]]
    ) -> list[list[tuple[CollectorView, dict[str, Any]]]]:
        """Split the collectors' inputs into requests: one group per destination app
        and key (per collector when posts are not merged), at most 128 inputs each."""
        groups: dict[tuple[str, ...], list[tuple[CollectorView, dict[str, Any]]]] = {}
        for view, inputs in ready:
            record = view.record
            group_key = (
                (record.user_id, record.app_id, view.post_inputs_key)
                if self.merge_posts
                else (view.key,)
            )
            entries = groups.setdefault(group_key, [])
            entries.extend((view, input_) for input_ in inputs)
        return [
            entries[start : start + MAX_INPUTS_PER_REQUEST]
            for entries in groups.values()
            for start in range(0, len(entries), MAX_INPUTS_PER_REQUEST)
        ]

    async def _prepare_contained(
        self, key: str, items: Sequence[dict[str, Any]], view: CollectorView | None
    ) -> tuple[tuple[CollectorView, list[dict[str, Any]]] | None, list[FailedDelivery]]:
        """Prepare one collector's items. An error that is not the infrastructure's
        fails only this collector's items (dead-lettered as PROCESSING_FAILED), not
        the other collectors that share the queue message."""
        try:
            return await self._prepare_collector(key, items, view)
        except INFRASTRUCTURE_ERRORS:
            raise
        except Exception as error:
            logger.exception("delivering the items of collector %s failed", key)
            self.stats.funnel[key]["failed"] += len(items)
            failure = FailedDelivery(
                key,
                list(items),
                f"processing failed: {error!r}",
                1,
                "PROCESSING_FAILED",
                payload_kind="items",
            )
            return None, [failure]

    async def _prepare_collector(
        self, key: str, items: Sequence[dict[str, Any]], view: CollectorView | None
    ) -> tuple[tuple[CollectorView, list[dict[str, Any]]] | None, list[FailedDelivery]]:
        """Return the collector's destination inputs that passed its workflows and
        rules, and the items whose remote models failed."""
        funnel = self.stats.funnel[key]
        if view is None or not view.record.active:
            funnel["dropped_inactive"] += len(items)
            return None, []

        survivors = []
        model_failures: list[dict[str, Any]] = []
        model_error = ""
        for item in items:
            try:
                passed = await self.passes_workflows(view, item)
            except RemoteModelError as error:
                model_failures.append(item)
                model_error = str(error)
                continue
            if passed:
                survivors.append(item)
            else:
                funnel["dropped_post_queue"] += 1
        failures = []
        if model_failures:
            funnel["failed"] += len(model_failures)
            failures.append(
                FailedDelivery(
                    key,
                    model_failures,
                    model_error,
                    1,
                    "COLLECTOR_MODEL_FAILED",
                    payload_kind="items",
                )
            )
        if self.gate is not None:
            survivors = await self.gate.admit(view, survivors)
        if not survivors:
            return None, failures
        collect_outputs = view.record.collect_outputs
        inputs = [destination_input(item, collect_outputs) for item in survivors]
        return (view, inputs), failures

    async def post(
        self, view: CollectorView, inputs: list[dict[str, Any]], give_up_s: float
    ) -> FailedDelivery | None:
        """POST inputs for a collector, retrying for up to `give_up_s`; return the
        failure, or None when every input was delivered."""
        failures = await self._post_entries(
            [(view, input_) for input_ in inputs], give_up_s
        )
        return failures[0] if failures else None

    async def _post_entries(
        self, entries: list[tuple[CollectorView, dict[str, Any]]], give_up_s: float
    ) -> list[FailedDelivery]:
        """POST the inputs of collectors that share a destination app and key,
        retrying for up to `give_up_s`. Return at most one failure per collector."""
        view = entries[0][0]
        record = view.record
        inputs = [input_ for _, input_ in entries]
        try:
            result = await self.destination.post_inputs(
                record.user_id,
                record.app_id,
                view.post_inputs_key,
                inputs,
                give_up_s=give_up_s,
            )
        except DeliveryError as error:
            if _fails_inputs_apart(error) and len(inputs) > 1:
                # One invalid input (bad base64, say) makes the destination reject
                # the whole request, or fail it with a mixed status although it
                # stored the others. Posting one by one fails only that input.
                return await self._post_one_by_one(entries, give_up_s)
            by_collector = _by_collector(entries)
            logger.warning(
                "delivery of %d inputs of %d collectors to %s/%s failed: %s",
                len(inputs),
                len(by_collector),
                record.user_id,
                record.app_id,
                error,
            )
            failures = []
            for collector_view, collector_inputs in by_collector.values():
                self.stats.funnel[collector_view.key]["failed"] += len(collector_inputs)
                failures.append(
                    FailedDelivery(
                        collector_view.key,
                        collector_inputs,
                        str(error),
                        error.attempts,
                        retriable=error.retriable,
                    )
                )
            return failures
        self.stats.destination_latency_s.append(result.latency_s)
        if all(other is view for other, _ in entries):
            funnel = self.stats.funnel[view.key]
            funnel["posted"] += result.posted
            funnel["already_present"] += result.already_present
            return []
        # Each id the response names as present counts once, so that two inputs
        # with the same id (which stage one never makes) still add up.
        present_ids = set(result.present_ids)
        for collector_view, input_ in entries:
            funnel = self.stats.funnel[collector_view.key]
            if input_["id"] in present_ids:
                present_ids.discard(input_["id"])
                funnel["already_present"] += 1
            else:
                funnel["posted"] += 1
        return []

    async def _post_one_by_one(
        self, entries: list[tuple[CollectorView, dict[str, Any]]], give_up_s: float
    ) -> list[FailedDelivery]:
        """Post inputs singly, all within `give_up_s`. Return one failure per
        collector with every input of it that failed, retriable only when all of
        them failed in a way that may pass."""
        deadline = time.monotonic() + give_up_s
        failed: dict[str, list[FailedDelivery]] = {}
        # The destination's in-flight limit bounds how many run at once. Each post
        # retries until the shared deadline, after one attempt at least.
        singles = await asyncio.gather(
            *(
                self._post_entries([entry], max(0.0, deadline - time.monotonic()))
                for entry in entries
            )
        )
        for failures in singles:
            for failure in failures:
                failed.setdefault(failure.collector_key, []).append(failure)
        counts = {key: 0 for key in failed}
        for view, _ in entries:
            if view.key in counts:
                counts[view.key] += 1
        return [
            FailedDelivery(
                key,
                [item for failure in failures for item in failure.items],
                f"{len(failures)} of {counts[key]} inputs failed; "
                f"first: {failures[0].reason}",
                max(failure.attempts for failure in failures),
                retriable=all(failure.retriable for failure in failures),
            )
            for key, failures in failed.items()
        ]

    async def passes_workflows(self, view: CollectorView, item: dict[str, Any]) -> bool:
        input_document = item["input"]
        seed_key = f"{view.key}/{input_document.get('id', '')}"
        if item.get("pre_queue_pending") and view.pre_queue is not None:
            data = item.get("output_data") or {}
            if not await self._run(
                view, view.pre_queue, data, input_document, seed_key
            ):
                return False
        if view.post_queue is None:
            return True
        data = input_document.get("data") or {}
        return await self._run(view, view.post_queue, data, input_document, seed_key)

    async def _call_with_retries(
        self, node: Mapping[str, Any], input_document: Mapping[str, Any]
    ) -> Data:
        """Call a remote model, retrying errors that may pass; raise RemoteModelError
        when it fails for good, so that the item is dead-lettered, not dropped."""
        assert self.call_remote_model is not None
        for delay_s in (*REMOTE_MODEL_RETRY_DELAYS_S, None):
            try:
                return await self.call_remote_model(node["model"], input_document)
            except RemoteModelError as error:
                if not error.retriable or delay_s is None:
                    raise
                logger.warning(
                    "remote model of node %s failed, retrying: %s", node["id"], error
                )
                await asyncio.sleep(delay_s)
        raise AssertionError("unreachable")

    async def _run(
        self,
        view: CollectorView,
        workflow: CompiledWorkflow,
        data: Data,
        input_document: Mapping[str, Any],
        seed_key: str,
    ) -> bool:
        remote_outputs: dict[str, Data] = {}
        nodes = remote_nodes(workflow) if workflow.remote_node_ids else []
        if nodes:
            if self.call_remote_model is None:
                raise RemoteModelError("this worker cannot call remote models", False)
            calls = [self._call_with_retries(node, input_document) for node in nodes]
            outputs = await asyncio.gather(*calls)
            remote_outputs = {node["id"]: out for node, out in zip(nodes, outputs)}
        context = EvalContext(
            input=input_document,
            seed_key=seed_key,
            relations=view.relations,
            remote_outputs=remote_outputs,
            collector_key=view.key,
        )
        return workflow.run(data, context).passed


def _fails_inputs_apart(error: DeliveryError) -> bool:
    """Tell whether posting a failed request's inputs one by one may deliver some:
    the destination rejected the request (HTTP 400), or its 2xx response has a
    mixed or failed status that names the inputs that failed."""
    status = error.http_status
    return status is not None and (status == 400 or 200 <= status < 300)


def _by_collector(
    entries: Sequence[tuple[CollectorView, dict[str, Any]]],
) -> dict[str, tuple[CollectorView, list[dict[str, Any]]]]:
    """Group a request's inputs by collector, in the order of the request."""
    grouped: dict[str, tuple[CollectorView, list[dict[str, Any]]]] = {}
    for view, input_ in entries:
        grouped.setdefault(view.key, (view, []))[1].append(input_)
    return grouped


def destination_input(item: Mapping[str, Any], collect_outputs: bool) -> dict[str, Any]:
    """Build the Input posted to the destination from a queue item."""
    source_data = item["input"].get("data") or {}
    data: dict[str, Any] = {}
    for field_name in ("image", "text", "video", "audio", "metadata"):
        if source_data.get(field_name):
            data[field_name] = source_data[field_name]
    if collect_outputs:
        concepts = (item.get("output_data") or {}).get("concepts") or []
        data["concepts"] = [
            {"id": c["id"], "name": c.get("name", ""), "value": c.get("value", 0.0)}
            for c in concepts
        ]
    return {"id": item["id"], "data": data}
