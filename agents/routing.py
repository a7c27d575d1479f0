"""Stage one: from a raw prediction event to per-collector batches of candidates.

`Router.route` is synchronous and does no I/O: it decodes and validates the event,
finds the collectors whose source matches each output, applies the stateless
sampling (the random sample and a pre-queue workflow without remote models) and
returns the survivors grouped by collector, plus what must be dead-lettered. The
agent in `agents/app.py` does the Kafka I/O around it.

Input ids at the destination are derived from the collector and the event (see
`destination_input_id`), so a replayed event posts the same ids again.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import ValidationError

from agents.stats import WorkerStats
from app.config_cache import CollectorView, ConfigSnapshot
from app.models import (
    SUCCESS,
    PredictionEvent,
    PredictionOutput,
    describe_validation_error,
)
from rules.context import EvalContext
from rules.sampling import keep_random_sample
from rules.uncertainty import metadata_value, sticky_fraction


def destination_input_id(collector_key: str, event_id: str, input_id: str) -> str:
    """Return the id the input gets at the destination: 32 hex characters of
    SHA-256 over `<user>/<app>/<collector>/<event id>/<input id>`."""
    seed = f"{collector_key}/{event_id}/{input_id}".encode()
    return hashlib.sha256(seed).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Why an event, or one output of it, cannot be processed."""

    reason: str
    code: str
    output_index: int | None = None
    event_id: str = ""


@dataclass(slots=True)
class RouteResult:
    # Collector key -> queue items (see `queue_item`).
    batches: defaultdict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    dead_letters: list[DeadLetter] = field(default_factory=list)


class Router:
    """Applies stage one to events, with the configuration snapshot of the moment."""

    def __init__(self, max_event_bytes: int, stats: WorkerStats) -> None:
        self.max_event_bytes = max_event_bytes
        self.stats = stats

    def route(
        self, value: bytes | None, snapshot: ConfigSnapshot, result: RouteResult
    ) -> None:
        """Route one raw event into `result`."""
        totals = self.stats.totals
        totals["events_in"] += 1
        event = self._decode(value, result)
        if event is None:
            totals["events_dead_lettered"] += 1
            return

        caller_user_id = event.caller.user_id
        for index, output in enumerate(event.outputs):
            totals["outputs_in"] += 1
            try:
                checked = PredictionOutput.model_validate(output)
            except ValidationError as error:
                reason = describe_validation_error(error, prefix=f"outputs.{index}")
                result.dead_letters.append(
                    DeadLetter(reason, "INVALID_OUTPUT", index, event.id)
                )
                totals["outputs_dead_lettered"] += 1
                continue
            failed = checked.status.code != SUCCESS
            model = checked.model
            collectors = snapshot.by_source.get(
                f"{model.user_id}/{model.app_id}/{model.id}"
            )
            if not collectors:
                totals["outputs_skipped_status" if failed else "outputs_unwatched"] += 1
                continue
            version_id = model.model_version.id if model.model_version else ""
            for view in collectors:
                if failed and not view.record.collect_failed_predictions:
                    continue
                if not _source_matches(view, version_id, caller_user_id):
                    continue
                item = self._sample(view, event, output, checked.input.id, failed)
                if item is not None:
                    result.batches[view.key].append(item)

    def _decode(
        self, value: bytes | None, result: RouteResult
    ) -> PredictionEvent | None:
        if not value:
            reason = (
                "empty value (a tombstone or an empty message); expected a JSON event"
            )
            result.dead_letters.append(DeadLetter(reason, "EMPTY_EVENT"))
            return None
        if len(value) > self.max_event_bytes:
            reason = (
                f"event of {len(value)} bytes exceeds the limit of "
                f"{self.max_event_bytes} bytes"
            )
            result.dead_letters.append(DeadLetter(reason, "EVENT_TOO_LARGE"))
            return None
        try:
            document = orjson.loads(value)
        except orjson.JSONDecodeError as error:
            result.dead_letters.append(
                DeadLetter(f"invalid JSON: {error}", "INVALID_JSON")
            )
            return None
        if not isinstance(document, dict):
            reason = f"expected a JSON object, got {type(document).__name__}"
            result.dead_letters.append(DeadLetter(reason, "INVALID_EVENT"))
            return None
        try:
            return PredictionEvent.model_validate(document)
        except ValidationError as error:
            event_id = document.get("id") if isinstance(document.get("id"), str) else ""
            reason = describe_validation_error(error)
            result.dead_letters.append(
                DeadLetter(reason, "INVALID_EVENT", None, event_id or "")
            )
            return None

    def _sample(
        self,
        view: CollectorView,
        event: PredictionEvent,
        output: dict[str, Any],
        input_id: str,
        failed: bool = False,
    ) -> dict[str, Any] | None:
        """Apply the random sample and the pre-queue workflow; return the queue item
        when the input survives. A failed prediction has no output for the pre-queue
        workflow to judge, so only the random sample applies to it."""
        funnel = self.stats.funnel[view.key]
        funnel["matched"] += 1
        record = view.record
        if view.broken_reason:
            funnel["dropped_pre_queue"] += 1
            return None
        fraction = record.pre_queue_random_sample
        if fraction > 0.0 and not _keep_sample(
            view, output["input"], input_id, fraction
        ):
            funnel["dropped_random_sample"] += 1
            return None

        deferred = view.pre_queue_is_remote and not failed
        if view.pre_queue is not None and not deferred and not failed:
            context = EvalContext(
                input=output["input"],
                seed_key=f"{view.key}/{input_id}",
                relations=view.relations,
                collector_key=view.key,
            )
            outcome = view.pre_queue.run(output.get("data") or {}, context)
            if not outcome.passed:
                funnel["dropped_pre_queue"] += 1
                return None
        funnel["enqueued"] += 1
        return queue_item(view, event, output, input_id, pre_queue_pending=deferred)


def _keep_sample(
    view: CollectorView, input_document: dict[str, Any], input_id: str, fraction: float
) -> bool:
    """Apply the collector's random sample: by input id, or by the value at its
    `sample_key` metadata path so that inputs sharing the value stay together."""
    sample_key = view.record.sample_key
    if not sample_key:
        return keep_random_sample(view.key, input_id, fraction)
    value = metadata_value(input_document, sample_key)
    if value is None:
        return False
    return sticky_fraction(view.key, value) < fraction


def _source_matches(view: CollectorView, version_id: str, caller_user_id: str) -> bool:
    record = view.record
    if not record.active:
        return False
    if record.model_version_id and record.model_version_id != version_id:
        return False
    if record.model_user_id != record.user_id:
        # Someone else's model (a public one too): only the owner's own calls count.
        return caller_user_id == record.user_id
    return not record.caller_user_id or record.caller_user_id == caller_user_id


def queue_item(
    view: CollectorView,
    event: PredictionEvent,
    output: dict[str, Any],
    input_id: str,
    pre_queue_pending: bool,
) -> dict[str, Any]:
    """Return what crosses the queue topic for one sampled input."""
    item: dict[str, Any] = {
        "id": destination_input_id(view.key, event.id, input_id),
        "event_id": event.id,
        "created_at": event.created_at.timestamp(),
        "input": output["input"],
    }
    data = output.get("data") or {}
    if view.record.collect_outputs or pre_queue_pending:
        item["output_data"] = data
    concepts = data.get("concepts")
    if concepts:
        top = max(concepts, key=lambda concept: concept.get("value", 0.0))
        item["top_concept"] = top.get("id", "")
    if pre_queue_pending:
        item["pre_queue_pending"] = True
    return item
