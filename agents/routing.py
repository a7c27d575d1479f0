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
from typing import Any, NamedTuple

import orjson
from pydantic import ValidationError

from agents.stats import WorkerStats
from app.config_cache import CollectorView, ConfigSnapshot
from app.models import (
    SUCCESS,
    PredictionEvent,
    describe_validation_error,
    output_fields,
)
from rules.context import EvalContext
from rules.uncertainty import metadata_value, sticky_fraction
from rules.workflow import WorkflowResult


def destination_input_id(collector_key: str, event_id: str, input_id: str) -> str:
    """Return the id the input gets at the destination: 32 hex characters of
    SHA-256 over `<user>/<app>/<collector>/<event id>/<input id>`."""
    seed = f"{collector_key}/{event_id}/{input_id}".encode()
    return hashlib.sha256(seed).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """The reason an event, or one output of it, cannot be processed."""

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


class _Candidate(NamedTuple):
    """A valid output whose model some collector watches."""

    output: dict[str, Any]
    input_id: str
    # The input id in UTF-8, encoded once for the sample decisions.
    input_id_bytes: bytes
    version_id: str
    failed: bool
    # The output's data, and whether any of its fields has content, checked once
    # for all the collectors that judge it.
    data: dict[str, Any]
    has_data: bool


class Router:
    """Applies stage one to events, with the configuration snapshot of the moment."""

    def __init__(self, max_event_bytes: int, stats: WorkerStats) -> None:
        self.max_event_bytes = max_event_bytes
        self.stats = stats

    def route(
        self, value: bytes | None, snapshot: ConfigSnapshot, result: RouteResult
    ) -> None:
        """Route one raw event into `result`.

        Outputs are grouped by model first, so that what depends only on the
        collector and the event (its state, its caller rule) is checked once per
        collector and event rather than once per output.
        """
        totals = self.stats.totals
        totals["events_in"] += 1
        event = self._decode(value, result)
        if event is None:
            totals["events_dead_lettered"] += 1
            return

        candidates_by_source = self._check_outputs(event, snapshot, result)
        caller_user_id = event.caller.user_id
        for source, candidates in candidates_by_source.items():
            for view in snapshot.by_source[source]:
                if _caller_matches(view, caller_user_id):
                    self._sample(view, event, candidates, result)

    def _check_outputs(
        self, event: PredictionEvent, snapshot: ConfigSnapshot, result: RouteResult
    ) -> dict[str, list[_Candidate]]:
        """Validate every output, dead-letter the invalid ones, count the ones no
        collector watches, and return the others grouped by model source key."""
        totals = self.stats.totals
        totals["outputs_in"] += len(event.outputs)
        candidates_by_source: dict[str, list[_Candidate]] = {}
        for index, output in enumerate(event.outputs):
            try:
                fields = output_fields(output)
            except ValidationError as error:
                reason = describe_validation_error(error, prefix=f"outputs.{index}")
                result.dead_letters.append(
                    DeadLetter(reason, "INVALID_OUTPUT", index, event.id)
                )
                totals["outputs_dead_lettered"] += 1
                continue
            failed = fields.status_code != SUCCESS
            if not snapshot.by_source.get(fields.source_key):
                totals["outputs_skipped_status" if failed else "outputs_unwatched"] += 1
                continue
            data = output.get("data") or {}
            candidate = _Candidate(
                output,
                fields.input_id,
                fields.input_id.encode(),
                fields.version_id,
                failed,
                data,
                any(data.values()),
            )
            candidates_by_source.setdefault(fields.source_key, []).append(candidate)
        return candidates_by_source

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
        candidates: list[_Candidate],
        result: RouteResult,
    ) -> None:
        """Apply the random sample and the pre-queue workflow of one collector to
        the event's outputs of its model, and add the survivors to `result`.

        A failed prediction has no output for the pre-queue workflow to judge, so
        only the random sample applies to it. Funnel counts are added once per
        collector and event.
        """
        record = view.record
        version_id = record.model_version_id
        collect_failed = record.collect_failed_predictions
        matched = [
            candidate
            for candidate in candidates
            if (collect_failed or not candidate.failed)
            and (not version_id or candidate.version_id == version_id)
        ]
        if not matched:
            return
        funnel = self.stats.funnel[view.key]
        funnel["matched"] += len(matched)
        if view.broken_reason:
            funnel["dropped_pre_queue"] += len(matched)
            return

        fraction = record.pre_queue_random_sample
        by_input_id = not record.sample_key
        # By input id, a fraction of 1 keeps every input (sample fractions are
        # below 1), so the hashing is skipped.
        samples = fraction > 0.0 and (fraction < 1.0 or not by_input_id)
        seed_prefix = view.sample_seed_prefix
        sample_limit = view.sample_limit
        workflow = view.pre_queue
        fast_step = workflow.context_free_step if workflow is not None else None
        fast_node_id, fast_passes = fast_step if fast_step is not None else ("", None)
        remote = view.pre_queue_is_remote
        items: list[dict[str, Any]] = []
        dropped_sample = dropped_pre_queue = dropped_fast_step = 0
        for candidate in matched:
            output = candidate.output
            if samples:
                if by_input_id:
                    # keep_random_sample(view.key, input_id, fraction), inlined
                    # because it runs for every collector and output.
                    seed = seed_prefix + candidate.input_id_bytes
                    in_sample = hashlib.sha256(seed).digest() < sample_limit
                else:
                    in_sample = _keep_sticky_sample(view, output["input"], fraction)
                if not in_sample:
                    dropped_sample += 1
                    continue
            deferred = remote and not candidate.failed
            if fast_passes is not None and not deferred and not candidate.failed:
                # A one-node workflow whose operator reads no context: the same
                # outcome as workflow.run, without building a context and a result.
                if not candidate.has_data or not fast_passes(candidate.data):
                    dropped_fast_step += 1
                    continue
            elif workflow is not None and not deferred and not candidate.failed:
                context = EvalContext(
                    input=output["input"],
                    seed_key=f"{view.key}/{candidate.input_id}",
                    relations=view.relations,
                    collector_key=view.key,
                )
                outcome = workflow.run(candidate.data, context)
                if not outcome.passed:
                    dropped_pre_queue += 1
                    self.stats.rule_drops[(view.key, _dropping_node(outcome))] += 1
                    continue
            items.append(queue_item(view, event, candidate, pre_queue_pending=deferred))

        # Only steps that happened are counted, as adding 0 would create the key.
        if dropped_sample:
            funnel["dropped_random_sample"] += dropped_sample
        if dropped_fast_step:
            self.stats.rule_drops[(view.key, fast_node_id)] += dropped_fast_step
            dropped_pre_queue += dropped_fast_step
        if dropped_pre_queue:
            funnel["dropped_pre_queue"] += dropped_pre_queue
        if items:
            funnel["enqueued"] += len(items)
            result.batches[view.key].extend(items)


def _dropping_node(outcome: WorkflowResult) -> str:
    """Return the first node, in topological order, whose output is empty: the rule
    that dropped the input."""
    for node_id, data in outcome.outputs.items():
        if not any(data.values()):
            return node_id
    return ""


def _keep_sticky_sample(
    view: CollectorView, input_document: dict[str, Any], fraction: float
) -> bool:
    """Apply the collector's random sample by the value at its `sample_key`
    metadata path, so that inputs sharing the value stay together."""
    value = metadata_value(input_document, view.record.sample_key)
    if value is None:
        return False
    return sticky_fraction(view.key, value) < fraction


def _caller_matches(view: CollectorView, caller_user_id: str) -> bool:
    """Return whether an active collector takes this caller's predictions (the
    model version is checked per output)."""
    record = view.record
    if not record.active:
        return False
    if record.model_user_id != record.user_id:
        # Someone else's model (a public one too): only the owner's own calls count.
        return caller_user_id == record.user_id
    return not record.caller_user_id or record.caller_user_id == caller_user_id


def queue_item(
    view: CollectorView,
    event: PredictionEvent,
    candidate: _Candidate,
    pre_queue_pending: bool,
) -> dict[str, Any]:
    """Return what crosses the queue topic for one sampled input."""
    item: dict[str, Any] = {
        "id": destination_input_id(view.key, event.id, candidate.input_id),
        "event_id": event.id,
        "created_at": event.created_at.timestamp(),
        "input": candidate.output["input"],
    }
    data = candidate.data
    if view.record.collect_outputs or pre_queue_pending:
        item["output_data"] = data
    concepts = data.get("concepts")
    if concepts:
        top = max(concepts, key=lambda concept: concept.get("value", 0.0))
        item["top_concept"] = top.get("id", "")
    if pre_queue_pending:
        item["pre_queue_pending"] = True
    return item
