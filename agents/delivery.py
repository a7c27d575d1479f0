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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agents.errors import INFRASTRUCTURE_ERRORS
from agents.stateful import StatefulGate
from agents.stats import WorkerStats
from app.config_cache import CollectorView, ConfigSnapshot
from app.destination import DeliveryError, Destination
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


class Deliverer:
    def __init__(
        self,
        destination: Destination,
        stats: WorkerStats,
        call_remote_model: RemoteModelCall | None = None,
        inline_give_up_s: float = 5.0,
        gate: StatefulGate | None = None,
    ) -> None:
        self.gate = gate
        # How long the deliver agent retries a failing POST before it moves the
        # inputs to the retry topic: the bound on how long one failing destination
        # holds up the other collectors of a batch (plus one request timeout).
        self.inline_give_up_s = inline_give_up_s
        self.destination = destination
        self.stats = stats
        self.call_remote_model = call_remote_model

    async def deliver(
        self, batches: Mapping[str, Sequence[dict[str, Any]]], snapshot: ConfigSnapshot
    ) -> list[FailedDelivery]:
        """Deliver every collector's items; return the deliveries that failed for
        good, for the dead-letter topic."""
        tasks = [
            self._deliver_contained(key, items, snapshot.by_key.get(key))
            for key, items in batches.items()
        ]
        results = await asyncio.gather(*tasks)
        return [failure for failures in results for failure in failures]

    async def _deliver_contained(
        self, key: str, items: Sequence[dict[str, Any]], view: CollectorView | None
    ) -> list[FailedDelivery]:
        """Deliver one collector's items. An error that is not the infrastructure's
        fails only this collector's items (dead-lettered as PROCESSING_FAILED), not
        the other collectors that share the queue message."""
        try:
            return await self._deliver_collector(key, items, view)
        except INFRASTRUCTURE_ERRORS:
            raise
        except Exception as error:
            logger.exception("delivering the items of collector %s failed", key)
            self.stats.funnel[key]["failed"] += len(items)
            return [
                FailedDelivery(
                    key,
                    list(items),
                    f"processing failed: {error!r}",
                    1,
                    "PROCESSING_FAILED",
                    payload_kind="items",
                )
            ]

    async def _deliver_collector(
        self, key: str, items: Sequence[dict[str, Any]], view: CollectorView | None
    ) -> list[FailedDelivery]:
        funnel = self.stats.funnel[key]
        if view is None or not view.record.active:
            funnel["dropped_inactive"] += len(items)
            return []

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
            return failures

        inputs = [
            destination_input(item, view.record.collect_outputs) for item in survivors
        ]
        failure = await self.post(view, inputs, self.inline_give_up_s)
        if failure is not None:
            failures.append(failure)
        return failures

    async def post(
        self, view: CollectorView, inputs: list[dict[str, Any]], give_up_s: float
    ) -> FailedDelivery | None:
        """POST inputs for a collector, retrying for up to `give_up_s`; return the
        failure, or None when every input was delivered."""
        record = view.record
        funnel = self.stats.funnel[view.key]
        try:
            result = await self.destination.post_inputs(
                record.user_id,
                record.app_id,
                view.post_inputs_key,
                inputs,
                give_up_s=give_up_s,
            )
        except DeliveryError as error:
            if error.http_status == 400 and len(inputs) > 1:
                # One invalid input (bad base64, say) makes the destination reject
                # the whole request; post one by one so that only it fails.
                return await self._post_one_by_one(view, inputs, give_up_s)
            logger.warning("delivery for collector %s failed: %s", view.key, error)
            funnel["failed"] += len(inputs)
            return FailedDelivery(
                view.key, inputs, str(error), error.attempts, retriable=error.retriable
            )
        funnel["posted"] += result.posted
        funnel["already_present"] += result.already_present
        self.stats.destination_latency_s.append(result.latency_s)
        return None

    async def _post_one_by_one(
        self, view: CollectorView, inputs: list[dict[str, Any]], give_up_s: float
    ) -> FailedDelivery | None:
        """Post inputs singly; return one failure holding every input that failed
        (retriable only when all of its inputs failed in a way that may pass)."""
        failed: list[dict[str, Any]] = []
        reasons: list[str] = []
        retriable = True
        attempts = 0
        for single in inputs:
            failure = await self.post(view, [single], give_up_s)
            if failure is not None:
                failed.extend(failure.items)
                reasons.append(failure.reason)
                retriable = retriable and failure.retriable
                attempts = max(attempts, failure.attempts)
        if not failed:
            return None
        reason = f"{len(failed)} of {len(inputs)} inputs failed; first: {reasons[0]}"
        return FailedDelivery(view.key, failed, reason, attempts, retriable=retriable)

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
