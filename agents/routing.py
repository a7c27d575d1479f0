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
import struct
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
from pydantic import ValidationError

from agents.stats import WorkerStats
from app.config_cache import CollectorView, ConfigSnapshot
from app.models import (
    SUCCESS,
    OutputFields,
    PredictionEvent,
    describe_validation_error,
    output_fields,
)
from rules.context import NATIVE_RULE_ATTRIBUTE, EvalContext
from rules.uncertainty import metadata_value, sticky_fraction
from rules.workflow import WorkflowResult

try:
    from agents import _stage_one
except ImportError:  # not built (see setup.py): the Python code decides alone
    _stage_one = None  # type: ignore[assignment]

# The extension's parser keeps a 72-byte node for every JSON value, up to about
# 32 times the event's size for an array of small numbers. Larger events, far
# beyond the 128 outputs of a predict call, take the orjson path.
RAW_EVENT_MAX_BYTES = 1 << 20


def native_available() -> bool:
    """Return whether the C extension agents._stage_one is built."""
    return _stage_one is not None


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
    """Applies stage one to events, with the configuration snapshot of the moment.

    With `native` (the default when agents._stage_one is built), the C extension
    parses the event's bytes, or reads orjson's objects when its parser cannot,
    checks the outputs and decides the random samples and the one-node threshold
    workflows. Python builds the queue items of the survivors and decides what the
    extension leaves to it (see `_plan`). Both ways give the same result.
    """

    def __init__(
        self,
        max_event_bytes: int,
        stats: WorkerStats,
        native: bool | None = None,
        defer_counts: bool = False,
    ) -> None:
        self.max_event_bytes = max_event_bytes
        self.stats = stats
        if native and _stage_one is None:
            raise RuntimeError(
                "the C extension agents._stage_one is not built; run"
                " `pip install -e .` with a C compiler, or use the Python stage one"
            )
        self.native = native_available() if native is None else native
        # With deferred counts, the extension's counts reach `stats` only when
        # `settle` is called, which the route agent does after each batch.
        # Without them, they reach it after every event.
        self.defer_counts = defer_counts
        self._plans_of: ConfigSnapshot | None = None
        self._plans: dict[str, tuple[tuple[Any, ...], ...]] = {}
        # The plans whose P_COUNTS the extension has added to since `settle`.
        self._touched: list[tuple[Any, ...]] = []

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
        if self.native:
            if snapshot is not self._plans_of:
                self._plans = {
                    source: tuple(_plan(view) for view in views)
                    for source, views in snapshot.by_source.items()
                }
                self._plans_of = snapshot
            # The extension parses the event itself. None: it takes the orjson
            # path below, which decides on every event.
            if value and len(value) <= min(self.max_event_bytes, RAW_EVENT_MAX_BYTES):
                assert _stage_one is not None
                raw = _stage_one.route_event(value, self._plans, self._touched)
                if raw is not None:
                    count, skipped_status, unwatched, batches = raw
                    totals["outputs_in"] += count
                    if skipped_status:
                        totals["outputs_skipped_status"] += skipped_status
                    if unwatched:
                        totals["outputs_unwatched"] += unwatched
                    for key, items in batches:
                        result.batches[key].extend(items)
                    if not self.defer_counts:
                        self.settle()
                    return

        event = self._decode(value, result)
        if event is None:
            totals["events_dead_lettered"] += 1
            return

        caller_user_id = event.caller.user_id
        if self.native:
            assert _stage_one is not None
            decided = _stage_one.route_outputs(
                event.outputs, caller_user_id, self._plans
            )
            # None: an output needs pydantic's validation, so Python routes it all.
            if decided is not None:
                self._apply(event, decided, result)
                return

        candidates_by_source = self._check_outputs(event, snapshot, result)
        for source, candidates in candidates_by_source.items():
            for view in snapshot.by_source[source]:
                if _caller_matches(view, caller_user_id):
                    self._sample(view, event, candidates, result)

    def settle(self) -> None:
        """Add the counts that the extension keeps in the plans to the funnels and
        rule drops of `stats`, as `_count` does, and reset them."""
        touched = self._touched
        if not touched:
            return
        funnels = self.stats.funnel
        rule_drops = self.stats.rule_drops
        for plan in touched:
            counts = plan[_PLAN_COUNTS]
            matched, dropped_sample, dropped_rule, enqueued = _COUNTS.unpack(counts)
            counts[:] = _ZERO_COUNTS
            view: CollectorView = plan[0]
            funnel = funnels[view.key]
            funnel["matched"] += matched
            if view.broken_reason:
                funnel["dropped_pre_queue"] += matched
                continue
            if dropped_sample:
                funnel["dropped_random_sample"] += dropped_sample
            if dropped_rule:
                rule_drops[(view.key, plan[_PLAN_NODE_ID])] += dropped_rule
                funnel["dropped_pre_queue"] += dropped_rule
            if enqueued:
                funnel["enqueued"] += enqueued
        touched.clear()

    def _apply(
        self,
        event: PredictionEvent,
        decided: tuple[tuple[int, int], list[tuple[Any, ...]]],
        result: RouteResult,
    ) -> None:
        """Count and enqueue what the C extension decided for one event."""
        (skipped_status, unwatched), decisions = decided
        outputs = event.outputs
        totals = self.stats.totals
        totals["outputs_in"] += len(outputs)
        if skipped_status:
            totals["outputs_skipped_status"] += skipped_status
        if unwatched:
            totals["outputs_unwatched"] += unwatched
        for decision in decisions:
            if len(decision) == 2:
                # A plan that Python decides: every output of the collector's model.
                plan, indices = decision
                candidates = [_candidate(outputs[index]) for index in indices]
                self._sample(plan[0], event, candidates, result)
                continue
            plan, matched, dropped_sample, dropped_rule, survivors = decision
            view: CollectorView = plan[0]
            if not self._count(plan, matched, dropped_sample, dropped_rule, survivors):
                continue
            batch = result.batches[view.key]
            for index in survivors:
                output = outputs[index]
                input_document = output["input"]
                batch.append(
                    queue_item(
                        view,
                        event,
                        output,
                        input_document["id"],
                        output.get("data") or {},
                        pre_queue_pending=False,
                    )
                )

    def _count(
        self,
        plan: tuple[Any, ...],
        matched: int,
        dropped_sample: int,
        dropped_rule: int,
        survivors: list[Any],
    ) -> bool:
        """Add one collector's decision on one event to its funnel and rule drops,
        as `_sample` does, and return whether it has survivors to enqueue."""
        view: CollectorView = plan[0]
        funnel = self.stats.funnel[view.key]
        funnel["matched"] += matched
        if view.broken_reason:
            funnel["dropped_pre_queue"] += matched
            return False
        if dropped_sample:
            funnel["dropped_random_sample"] += dropped_sample
        if dropped_rule:
            self.stats.rule_drops[(view.key, plan[_PLAN_NODE_ID])] += dropped_rule
            funnel["dropped_pre_queue"] += dropped_rule
        if not survivors:
            return False
        funnel["enqueued"] += len(survivors)
        return True

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
            candidate = _candidate(output, fields)
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
            items.append(
                queue_item(
                    view,
                    event,
                    output,
                    candidate.input_id,
                    candidate.data,
                    pre_queue_pending=deferred,
                )
            )

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
    output: dict[str, Any],
    input_id: str,
    data: dict[str, Any],
    pre_queue_pending: bool,
) -> dict[str, Any]:
    """Return what crosses the queue topic for one sampled output, whose input id
    and data (`output.get("data") or {}`) the caller has read."""
    item: dict[str, Any] = {
        "id": destination_input_id(view.key, event.id, input_id),
        "event_id": event.id,
        "created_at": event.created_at.timestamp(),
        "input": output["input"],
    }
    if view.record.collect_outputs or pre_queue_pending:
        item["output_data"] = data
    concepts = data.get("concepts")
    if concepts:
        top = max(concepts, key=lambda concept: concept.get("value", 0.0))
        item["top_concept"] = top.get("id", "")
    if pre_queue_pending:
        item["pre_queue_pending"] = True
    return item


def _candidate(output: Any, fields: OutputFields | None = None) -> _Candidate:
    """Return the candidate of a valid output, whose fields are read when not given."""
    if fields is None:
        fields = output_fields(output)
    data = output.get("data") or {}
    return _Candidate(
        output,
        fields.input_id,
        fields.input_id.encode(),
        fields.version_id,
        fields.status_code != SUCCESS,
        data,
        any(data.values()),
    )


# The codes of the one-node workflows that the C extension runs (RULE_* in
# agents/_stage_one.c).
_RULE_CODES = {"max-probability-below": 1, "min-probability-above": 2}
_THRESHOLDER = 3
_PLAN_NODE_ID = 14
_PLAN_COUNTS = 19
# A plan's counts (C_* in agents/_stage_one.c): matched, dropped by the sample,
# dropped by the rule and enqueued, as native int64.
_COUNTS = struct.Struct("=4q")
_ZERO_COUNTS = bytes(_COUNTS.size)


def _plan(view: CollectorView) -> tuple[Any, ...]:
    """Return what the C extension reads of a collector, in the order of the P_*
    enum in agents/_stage_one.c:

    - the view;
    - whether Python decides its outputs: for a sample by metadata value, a
      remote pre-queue model, or a workflow other than one max-probability-below,
      min-probability-above or concept-thresholder node;
    - whether it is active, the caller user id it requires (or None) and the
      model version id it requires (or "");
    - whether it collects failed predictions, and whether it is broken;
    - whether it samples by input id, with the seed prefix and digest limit;
    - the rule code, threshold, comparator code and thresholds of its one-node
      workflow, and that node's id;
    - the thresholds again, as pairs of the concept id in UTF-8 and the
      threshold, which raw events are compared with;
    - the collector's key, and the same in UTF-8 with a slash, which starts
      the seed of its destination input ids;
    - whether it collects outputs;
    - its counts: a bytearray that route_event adds to until `Router.settle`.
    """
    record = view.record
    workflow = view.pre_queue
    step = workflow.context_free_step if workflow is not None else None
    native_rule = getattr(step[1], NATIVE_RULE_ATTRIBUTE, None) if step else None
    python = (
        bool(record.sample_key)
        or view.pre_queue_is_remote
        or (workflow is not None and native_rule is None)
    )
    rule, threshold, comparator, thresholds = 0, 0.0, 0, None
    if native_rule is not None and not python:
        kind = native_rule[0]
        if kind == "concept-thresholder":
            rule, comparator, thresholds = _THRESHOLDER, native_rule[1], native_rule[2]
        else:
            rule, threshold = _RULE_CODES[kind], float(native_rule[1])
    if record.model_user_id != record.user_id:
        caller: str | None = record.user_id
    else:
        caller = record.caller_user_id or None
    fraction = record.pre_queue_random_sample
    return (
        view,
        python,
        bool(record.active),
        caller,
        record.model_version_id,
        bool(record.collect_failed_predictions),
        bool(view.broken_reason),
        0.0 < fraction < 1.0,
        view.sample_seed_prefix,
        view.sample_limit,
        rule,
        threshold,
        comparator,
        thresholds,
        step[0] if step else "",
        tuple((key.encode(), value) for key, value in (thresholds or {}).items()),
        view.key,
        view.key.encode() + b"/",
        bool(record.collect_outputs),
        bytearray(_COUNTS.size),
    )
