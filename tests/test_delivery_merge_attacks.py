"""Attacks on stage two's shared POST /inputs requests.

Collectors that post to the same app with the same key share requests. These tests
check, against an HTTP destination run by the test, that every input reaches the
destination or exactly one failure, that each collector's funnel adds up, and that
one collector's trouble does not fail or delay the others.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from agents.delivery import Deliverer, FailedDelivery
from agents.stats import WorkerStats
from app.config_cache import CollectorView
from app.destination import MAX_INPUTS_PER_REQUEST, Destination
from app.models import COLLECTOR_INACTIVE, CollectorRecord
from tests.harness import JsonHandler, serve_http, wait_for
from tests.test_delivery_merge import items, read_post, snapshot_of

SUCCESS = 10000
MIXED_STATUS = 10010
ALREADY_PRESENT = 30100
INPUT_DOWNLOAD_FAILED = 30002

# A response: the HTTP status and the JSON document.
Response = tuple[int, dict[str, Any]]
# Builds the response to one request from the app id, the input ids and the index
# of the request among all requests the server received.
Responder = Callable[[str, list[str], int], Response]


def succeed_each(app_id: str, ids: list[str], index: int) -> Response:
    items = [{"id": input_id, "status": {"code": SUCCESS}} for input_id in ids]
    return 200, {"status": {"code": SUCCESS}, "inputs": items}


@dataclass
class Request:
    app_id: str
    authorization: str
    ids: list[str]
    received_at: float


@dataclass
class FakeApps:
    """POST /inputs of every app: records each request and responds with
    `respond`."""

    respond: Responder = succeed_each
    requests: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ids_posted(self) -> list[str]:
        return [input_id for request in self.requests for input_id in request.ids]


@pytest.fixture
def apps() -> Iterator[tuple[str, FakeApps]]:
    fake = FakeApps()

    class Handler(JsonHandler):
        def do_POST(self) -> None:
            app_id, ids = read_post(self)
            with fake.lock:
                index = len(fake.requests)
                fake.requests.append(
                    Request(
                        app_id, self.headers["Authorization"], ids, time.monotonic()
                    )
                )
            status, document = fake.respond(app_id, ids, index)
            self.send_json(status, document)

    with serve_http(Handler) as url:
        yield url, fake


# Success responses that list no inputs: every input sent counts as posted.
BARE_SUCCESS_DOCUMENTS = [
    {"status": {"code": SUCCESS}},
    {"status": {"code": SUCCESS}, "inputs": []},
    {},
]


def view(
    collector_id: str,
    app_id: str,
    key: str = "post-key",
    active: bool = True,
    stateful: bool = False,
) -> CollectorView:
    record = CollectorRecord(
        user_id="owner",
        app_id=app_id,
        id=collector_id,
        model_user_id="owner",
        model_app_id="models",
        model_id="classifier",
    )
    if not active:
        record = record.model_copy(update={"status_code": COLLECTOR_INACTIVE})
    # The fake gate below ignores the rules, so any non-empty tuple marks the
    # collector as one whose preparation waits on Redis.
    rules: tuple[Any, ...] = ("quota",) if stateful else ()
    return CollectorView(record, record.key, key, None, None, (), stateful_rules=rules)


class SlowGate:
    """A quota/dedupe gate that admits every item after a per-collector delay, or
    raises for the collectors in `broken`."""

    def __init__(
        self, delays_s: dict[str, float], broken: frozenset[str] = frozenset()
    ) -> None:
        self.delays_s = delays_s
        self.broken = broken
        self.admitted_at: dict[str, float] = {}

    async def admit(
        self, view: CollectorView, items: Sequence[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        if not view.stateful_rules:
            return list(items)
        await asyncio.sleep(self.delays_s.get(view.key, 0.0))
        self.admitted_at[view.key] = time.monotonic()
        if view.key in self.broken:
            raise ValueError(f"gate of {view.key} is broken")
        return list(items)


class WaitingGate:
    """A quota/dedupe gate that keeps collector `waiting` waiting until the
    destination has received an input of `first`, for up to 10 s, and notes
    whether it did."""

    def __init__(self, fake: FakeApps, waiting: str, first: str) -> None:
        self.fake = fake
        self.waiting = waiting
        self.first = first
        self.first_came_first: bool | None = None

    async def admit(
        self, view: CollectorView, items: Sequence[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        if view.key == self.waiting:
            try:
                await wait_for(self._first_received, "the first input", 10.0)
            except AssertionError:
                self.first_came_first = False
            else:
                self.first_came_first = True
        return list(items)

    async def _first_received(self) -> bool:
        prefix = f"{self.first}-"
        return any(
            input_id.startswith(prefix)
            for request in list(self.fake.requests)
            for input_id in request.ids
        )


async def deliver(
    url: str,
    views: list[CollectorView],
    batches: dict[str, list[dict[str, Any]]],
    merge_posts: bool = True,
    gate: Any = None,
    inline_give_up_s: float = 0.3,
) -> tuple[list[FailedDelivery], WorkerStats]:
    stats = WorkerStats()
    destination = Destination(
        url, timeout_s=2.0, backoff_base_s=0.01, backoff_max_s=0.05
    )
    deliverer = Deliverer(
        destination,
        stats,
        inline_give_up_s=inline_give_up_s,
        gate=gate,
        merge_posts=merge_posts,
    )
    try:
        failures = await deliverer.deliver(batches, snapshot_of(*views))
    finally:
        await destination.aclose()
    return failures, stats


def failed_ids(failures: Sequence[FailedDelivery]) -> list[str]:
    return [item["id"] for failure in failures for item in failure.items]


def assert_funnel_adds_up(
    stats: WorkerStats, batches: dict[str, list[dict[str, Any]]]
) -> None:
    for key, batch in batches.items():
        funnel = stats.funnel[key]
        accounted = (
            funnel["posted"]
            + funnel["already_present"]
            + funnel["failed"]
            + funnel["dropped_inactive"]
        )
        assert accounted == len(batch), f"funnel of {key}: {dict(funnel)}"


# --- requests of more than one collector ------------------------------------------


async def test_150_inputs_posted_once_each(
    apps: tuple[str, FakeApps],
) -> None:
    url, fake = apps
    views = [view(name, "shared") for name in ("a", "b", "c")]
    batches = {v.key: items(v.record.id, 50) for v in views}

    failures, stats = await deliver(url, views, batches)

    assert failures == []
    sizes = sorted(len(request.ids) for request in fake.requests)
    assert sizes == [150 - MAX_INPUTS_PER_REQUEST, MAX_INPUTS_PER_REQUEST]
    posted = fake.ids_posted()
    assert sorted(posted) == sorted(i["id"] for b in batches.values() for i in b)
    for key in batches:
        assert stats.funnel[key]["posted"] == 50
    assert_funnel_adds_up(stats, batches)


async def test_present_in_second_chunk_per_collector(
    apps: tuple[str, FakeApps],
) -> None:
    url, fake = apps
    present = {"b-90", "b-99", "a-0"}

    def respond(app_id: str, ids: list[str], index: int) -> Response:
        response_items = [
            {"id": i, "status": {"code": ALREADY_PRESENT if i in present else SUCCESS}}
            for i in ids
        ]
        mixed = any(i in present for i in ids)
        code = MIXED_STATUS if mixed else SUCCESS
        return 200, {"status": {"code": code}, "inputs": response_items}

    fake.respond = respond
    views = [view("a", "shared"), view("b", "shared")]
    batches = {v.key: items(v.record.id, 100) for v in views}

    failures, stats = await deliver(url, views, batches)

    assert failures == []
    first, second = stats.funnel[views[0].key], stats.funnel[views[1].key]
    assert (first["posted"], first["already_present"]) == (99, 1)
    assert (second["posted"], second["already_present"]) == (98, 2)


async def test_503_across_chunks_fails_every_input_once(
    apps: tuple[str, FakeApps],
) -> None:
    url, fake = apps
    fake.respond = lambda app_id, ids, index: (503, {"status": {"code": 10020}})
    views = [view("a", "shared"), view("b", "shared")]
    batches = {v.key: items(v.record.id, 100) for v in views}

    failures, stats = await deliver(url, views, batches)

    ids = failed_ids(failures)
    assert sorted(ids) == sorted(i["id"] for b in batches.values() for i in b)
    assert len(ids) == len(set(ids))
    for failure in failures:
        prefix = failure.collector_key.rsplit("/", 1)[1]
        assert all(item["id"].startswith(f"{prefix}-") for item in failure.items)
        assert failure.retriable
        assert failure.payload_kind == "inputs"
    assert stats.funnel[views[0].key]["failed"] == 100
    assert stats.funnel[views[1].key]["failed"] == 100
    assert_funnel_adds_up(stats, batches)


async def test_503_for_one_app_spares_other_apps(
    apps: tuple[str, FakeApps],
) -> None:
    url, fake = apps

    def respond(app_id: str, ids: list[str], index: int) -> Response:
        if app_id == "down":
            return 503, {"status": {"code": 10020}}
        return succeed_each(app_id, ids, index)

    fake.respond = respond
    views = [view("a", "down"), view("b", "down"), view("c", "up"), view("d", "up")]
    batches = {v.key: items(v.record.id, 3) for v in views}

    failures, stats = await deliver(url, views, batches)

    assert sorted(f.collector_key for f in failures) == [
        views[0].key,
        views[1].key,
    ]
    assert sorted(failed_ids(failures)) == sorted(
        i["id"] for v in views[:2] for i in batches[v.key]
    )
    assert stats.funnel[views[2].key]["posted"] == 3
    assert stats.funnel[views[3].key]["posted"] == 3
    up_requests = [r for r in fake.requests if r.app_id == "up"]
    assert len(up_requests) == 1
    assert_funnel_adds_up(stats, batches)


async def test_400_then_200_posts_every_input_singly(
    apps: tuple[str, FakeApps],
) -> None:
    url, fake = apps

    def respond(app_id: str, ids: list[str], index: int) -> Response:
        if index == 0:
            return 400, {"status": {"code": 11102}}
        return succeed_each(app_id, ids, index)

    fake.respond = respond
    views = [view("a", "shared"), view("b", "shared")]
    batches = {views[0].key: items("a", 2), views[1].key: items("b", 3)}

    failures, stats = await deliver(url, views, batches)

    assert failures == []
    assert [len(request.ids) for request in fake.requests] == [5, 1, 1, 1, 1, 1]
    assert stats.funnel[views[0].key]["posted"] == 2
    assert stats.funnel[views[1].key]["posted"] == 3
    assert_funnel_adds_up(stats, batches)


async def test_400_fallback_fails_only_bad_inputs(
    apps: tuple[str, FakeApps],
) -> None:
    url, fake = apps

    def respond(app_id: str, ids: list[str], index: int) -> Response:
        if any(i.startswith("bad") for i in ids):
            return 400, {"status": {"code": 11102}}
        return succeed_each(app_id, ids, index)

    fake.respond = respond
    views = [view("a", "shared"), view("b", "shared"), view("c", "shared")]
    batches = {
        views[0].key: [*items("a", 2), *items("bad-a", 1)],
        views[1].key: items("b", 2),
        views[2].key: [*items("bad-c", 2), *items("c", 1)],
    }

    failures, stats = await deliver(url, views, batches)

    by_key = {f.collector_key: f for f in failures}
    assert sorted(by_key) == [views[0].key, views[2].key]
    assert [i["id"] for i in by_key[views[0].key].items] == ["bad-a-0"]
    assert [i["id"] for i in by_key[views[2].key].items] == ["bad-c-0", "bad-c-1"]
    assert by_key[views[2].key].reason.startswith("2 of 3 inputs failed")
    assert stats.funnel[views[1].key]["posted"] == 2
    assert stats.funnel[views[2].key]["posted"] == 1
    assert_funnel_adds_up(stats, batches)


async def test_mixed_status_failure_spares_other_collectors(
    apps: tuple[str, FakeApps],
) -> None:
    url, fake = apps

    def respond(app_id: str, ids: list[str], index: int) -> Response:
        response_items = [
            {
                "id": i,
                "status": {
                    "code": INPUT_DOWNLOAD_FAILED if i.startswith("bad") else SUCCESS
                },
            }
            for i in ids
        ]
        failed = any(i.startswith("bad") for i in ids)
        return 200, {
            "status": {"code": MIXED_STATUS if failed else SUCCESS},
            "inputs": response_items,
        }

    fake.respond = respond
    good, bad = view("good", "shared"), view("bad", "shared")
    batches = {good.key: items("good", 2), bad.key: items("bad", 1)}

    failures, stats = await deliver(url, [good, bad], batches)

    # Alone, the good collector's request succeeds, so sharing a request with a
    # collector whose input the destination cannot download must not fail it.
    assert [f.collector_key for f in failures] == [bad.key]
    assert stats.funnel[good.key]["posted"] == 2
    assert stats.funnel[good.key]["failed"] == 0


async def test_duplicate_id_across_collectors_counts(
    apps: tuple[str, FakeApps],
) -> None:
    url, fake = apps

    def respond(app_id: str, ids: list[str], index: int) -> Response:
        # The destination stores the first "dup" and reports the second present.
        seen: set[str] = set()
        response_items = []
        for i in ids:
            code = ALREADY_PRESENT if i in seen else SUCCESS
            seen.add(i)
            response_items.append({"id": i, "status": {"code": code}})
        return 200, {"status": {"code": MIXED_STATUS}, "inputs": response_items}

    fake.respond = respond
    first, second = view("first", "shared"), view("second", "shared")
    duplicate = {"id": "dup", "input": {"id": "dup", "data": {}}}
    batches = {first.key: [duplicate], second.key: [dict(duplicate)]}

    failures, stats = await deliver(url, [first, second], batches)

    assert failures == []
    assert fake.ids_posted() == ["dup", "dup"]
    total_posted = sum(stats.funnel[k]["posted"] for k in batches)
    total_present = sum(stats.funnel[k]["already_present"] for k in batches)
    assert (total_posted, total_present) == (1, 1)


@pytest.mark.parametrize(
    "document",
    BARE_SUCCESS_DOCUMENTS,
    ids=["no-inputs-field", "empty-inputs", "empty-object"],
)
async def test_bare_success_counts_merged_posted(
    apps: tuple[str, FakeApps], document: dict[str, Any]
) -> None:
    url, fake = apps
    fake.respond = lambda app_id, ids, index: (200, document)
    views = [view("a", "shared"), view("b", "shared")]
    batches = {v.key: items(v.record.id, 2) for v in views}

    failures, stats = await deliver(url, views, batches)

    assert failures == []
    assert stats.funnel[views[0].key]["posted"] == 2
    assert stats.funnel[views[1].key]["posted"] == 2


@pytest.mark.parametrize(
    "document",
    BARE_SUCCESS_DOCUMENTS,
    ids=["no-inputs-field", "empty-inputs", "empty-object"],
)
async def test_bare_success_counts_lone_posted(
    apps: tuple[str, FakeApps], document: dict[str, Any]
) -> None:
    url, fake = apps
    fake.respond = lambda app_id, ids, index: (200, document)
    lone = view("lone", "own-app")
    batches = {lone.key: items("lone", 2)}

    failures, stats = await deliver(url, [lone], batches)

    assert failures == []
    assert stats.funnel[lone.key]["posted"] == 2


async def test_fewer_inputs_listed_merged_funnel_adds_up(
    apps: tuple[str, FakeApps],
) -> None:
    url, fake = apps

    def respond(app_id: str, ids: list[str], index: int) -> Response:
        listed = [{"id": i, "status": {"code": SUCCESS}} for i in ids[:1]]
        return 200, {"status": {"code": SUCCESS}, "inputs": listed}

    fake.respond = respond
    views = [view("a", "shared"), view("b", "shared")]
    batches = {v.key: items(v.record.id, 2) for v in views}

    failures, stats = await deliver(url, views, batches)

    assert failures == []
    assert_funnel_adds_up(stats, batches)


async def test_fewer_inputs_listed_lone_funnel_adds_up(
    apps: tuple[str, FakeApps],
) -> None:
    url, fake = apps

    def respond(app_id: str, ids: list[str], index: int) -> Response:
        listed = [{"id": i, "status": {"code": SUCCESS}} for i in ids[:1]]
        return 200, {"status": {"code": SUCCESS}, "inputs": listed}

    fake.respond = respond
    lone = view("lone", "own-app")
    batches = {lone.key: items("lone", 2)}

    failures, stats = await deliver(url, [lone], batches)

    assert failures == []
    assert_funnel_adds_up(stats, batches)


async def test_present_without_ids_takes_posted_position(
    apps: tuple[str, FakeApps],
) -> None:
    url, fake = apps

    def respond(app_id: str, ids: list[str], index: int) -> Response:
        listed = [
            {"status": {"code": ALREADY_PRESENT if i.startswith("b") else SUCCESS}}
            for i in ids
        ]
        return 200, {"status": {"code": MIXED_STATUS}, "inputs": listed}

    fake.respond = respond
    views = [view("a", "shared"), view("b", "shared")]
    batches = {v.key: items(v.record.id, 2) for v in views}

    failures, stats = await deliver(url, views, batches)

    assert failures == []
    assert stats.funnel[views[0].key]["posted"] == 2
    assert stats.funnel[views[0].key]["already_present"] == 0
    assert stats.funnel[views[1].key]["posted"] == 0
    assert stats.funnel[views[1].key]["already_present"] == 2


# --- inactive, broken and waiting collectors ---------------------------------------


async def test_paused_collector_left_out_of_request(
    apps: tuple[str, FakeApps],
) -> None:
    url, fake = apps
    first, paused, last = (
        view("first", "shared"),
        view("paused", "shared", active=False),
        view("last", "shared"),
    )
    batches = {
        first.key: items("first", 2),
        paused.key: items("paused", 2),
        "owner/shared/deleted": items("deleted", 2),
        last.key: items("last", 2),
    }

    failures, stats = await deliver(url, [first, paused, last], batches)

    assert failures == []
    assert len(fake.requests) == 1
    assert sorted(fake.requests[0].ids) == [
        "first-0",
        "first-1",
        "last-0",
        "last-1",
    ]
    assert stats.funnel[paused.key]["dropped_inactive"] == 2
    assert stats.funnel["owner/shared/deleted"]["dropped_inactive"] == 2
    assert_funnel_adds_up(stats, batches)


async def test_broken_collector_spares_sharing_collector(
    apps: tuple[str, FakeApps],
) -> None:
    url, fake = apps
    plain, broken = view("plain", "shared"), view("broken", "shared")
    # An item without an "input" breaks the preparation of its collector.
    batches = {plain.key: items("plain", 2), broken.key: [{"id": "broken-0"}]}

    failures, stats = await deliver(url, [plain, broken], batches)

    assert [(f.collector_key, f.code) for f in failures] == [
        (broken.key, "PROCESSING_FAILED")
    ]
    assert failures[0].payload_kind == "items"
    assert sorted(fake.ids_posted()) == ["plain-0", "plain-1"]
    assert stats.funnel[plain.key]["posted"] == 2
    assert_funnel_adds_up(stats, batches)


async def test_failing_gate_spares_sharing_collectors(
    apps: tuple[str, FakeApps],
) -> None:
    url, fake = apps
    plain = view("plain", "shared")
    gated = view("gated", "shared", stateful=True)
    broken = view("broken", "shared", stateful=True)
    gate = SlowGate({}, broken=frozenset({broken.key}))
    batches = {
        plain.key: items("plain", 1),
        gated.key: items("gated", 1),
        broken.key: items("broken", 1),
    }

    failures, stats = await deliver(url, [plain, gated, broken], batches, gate=gate)

    assert [(f.collector_key, f.code) for f in failures] == [
        (broken.key, "PROCESSING_FAILED")
    ]
    assert sorted(fake.ids_posted()) == ["gated-0", "plain-0"]
    assert_funnel_adds_up(stats, batches)


async def test_gated_collector_posts_apart_from_plain_ones(
    apps: tuple[str, FakeApps],
) -> None:
    url, fake = apps
    plain_a, plain_b = view("a", "shared"), view("b", "shared")
    gated = view("gated", "shared", stateful=True)
    # The gated collector is admitted only once the plain collectors' inputs
    # have arrived, which never happens if their request waits for it.
    gate = WaitingGate(fake, waiting=gated.key, first="a")
    batches = {v.key: items(v.record.id, 2) for v in (plain_a, gated, plain_b)}

    failures, stats = await deliver(url, [plain_a, plain_b, gated], batches, gate=gate)

    assert failures == []
    assert gate.first_came_first is True
    assert len(fake.requests) == 2
    plain_request, gated_request = sorted(fake.requests, key=lambda r: r.received_at)
    assert sorted(plain_request.ids) == ["a-0", "a-1", "b-0", "b-1"]
    assert gated_request.ids == ["gated-0", "gated-1"]
    assert_funnel_adds_up(stats, batches)


async def test_slow_gate_delays_no_other_gated_post(
    apps: tuple[str, FakeApps],
) -> None:
    url, fake = apps
    slow = view("slow", "slow-app", stateful=True)
    fast = view("fast", "fast-app", stateful=True)
    # The slow collector's check ends only once the fast collector's input has
    # arrived, which never happens if the fast post waits for the slow check.
    gate = WaitingGate(fake, waiting=slow.key, first="fast")
    batches = {slow.key: items("slow", 1), fast.key: items("fast", 1)}

    failures, _ = await deliver(url, [slow, fast], batches, gate=gate)

    assert failures == []
    assert gate.first_came_first is True
    assert sorted(fake.ids_posted()) == ["fast-0", "slow-0"]


# --- time bounds and the retry topic path ------------------------------------------


async def test_one_by_one_fallback_time_bound(
    apps: tuple[str, FakeApps],
) -> None:
    url, fake = apps

    def respond(app_id: str, ids: list[str], index: int) -> Response:
        # The shared request is rejected, then the destination goes down.
        if len(ids) > 1:
            return 400, {"status": {"code": 11102}}
        return 503, {"status": {"code": 10020}}

    fake.respond = respond
    views = [view("a", "shared"), view("b", "shared")]
    batches = {v.key: items(v.record.id, 4) for v in views}
    started = time.monotonic()

    failures, _ = await deliver(url, views, batches, inline_give_up_s=1.0)

    elapsed_s = time.monotonic() - started
    assert sorted(failed_ids(failures)) == sorted(
        i["id"] for b in batches.values() for i in b
    )
    assert all(f.retriable for f in failures)
    # The singles share the inline retry time of 1 s. Retried one after another,
    # each for the whole second, the 8 inputs would take 8 s or more. The bound
    # leaves 3 s for a slow machine.
    assert elapsed_s < 4.0


async def test_retry_post_fails_only_bad_input(
    apps: tuple[str, FakeApps],
) -> None:
    url, fake = apps

    def respond(app_id: str, ids: list[str], index: int) -> Response:
        if any(i.startswith("bad") for i in ids):
            return 400, {"status": {"code": 11102}}
        return succeed_each(app_id, ids, index)

    fake.respond = respond
    stats = WorkerStats()
    destination = Destination(url, backoff_base_s=0.01, backoff_max_s=0.05)
    deliverer = Deliverer(destination, stats, inline_give_up_s=0.3)
    collector = view("retried", "shared")
    inputs = [{"id": "ok-0", "data": {}}, {"id": "bad-0", "data": {}}]
    try:
        failure = await deliverer.post(collector, inputs, 0.3)
    finally:
        await destination.aclose()

    assert failure is not None
    assert failure.collector_key == collector.key
    assert [i["id"] for i in failure.items] == ["bad-0"]
    assert not failure.retriable
    assert stats.funnel[collector.key]["posted"] == 1
    assert stats.funnel[collector.key]["failed"] == 1


async def test_retry_post_503_fails_all_retriably(
    apps: tuple[str, FakeApps],
) -> None:
    url, fake = apps
    fake.respond = lambda app_id, ids, index: (503, {"status": {"code": 10020}})
    stats = WorkerStats()
    destination = Destination(url, backoff_base_s=0.01, backoff_max_s=0.05)
    deliverer = Deliverer(destination, stats, inline_give_up_s=0.3)
    collector = view("retried", "shared")
    inputs = [{"id": f"r-{n}", "data": {}} for n in range(3)]
    try:
        failure = await deliverer.post(collector, inputs, 0.2)
    finally:
        await destination.aclose()

    assert failure is not None
    assert failure.collector_key == collector.key
    assert [i["id"] for i in failure.items] == ["r-0", "r-1", "r-2"]
    assert failure.retriable
    assert failure.attempts >= 2
    assert stats.funnel[collector.key]["failed"] == 3
