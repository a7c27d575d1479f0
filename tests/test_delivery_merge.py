"""Stage two's requests to the destination: collectors that post to the same app
with the same key share requests, while the funnel, the failures and the one-by-one
fallback stay per collector. The destination is an HTTP server run by the test."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import pytest

from agents.delivery import Deliverer
from agents.stats import WorkerStats
from app.config_cache import CollectorView, ConfigSnapshot
from app.destination import MAX_INPUTS_PER_REQUEST, Destination
from app.models import COLLECTOR_INACTIVE, CollectorRecord
from tests.harness import JsonHandler, serve_http

ALREADY_PRESENT = 30100


@dataclass
class App:
    """POST /inputs that records each request's path, key and input ids.

    Inputs in `present` get the already-present code (a mixed status), a
    request holding an id that starts with "bad" gets HTTP 400, and every request
    to an app in `failing` gets HTTP 503."""

    requests: list[tuple[str, str, list[str]]] = field(default_factory=list)
    present: set[str] = field(default_factory=set)
    failing: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ids_by_app(self) -> dict[str, list[str]]:
        grouped: dict[str, list[str]] = {}
        for path, _, ids in self.requests:
            grouped.setdefault(path.split("/")[5], []).extend(ids)
        return grouped


def read_post(handler: JsonHandler) -> tuple[str, list[str]]:
    """Return the app id in a POST /inputs request's path and the ids of its inputs."""
    body = json.loads(handler.rfile.read(int(handler.headers["Content-Length"])))
    return handler.path.split("/")[5], [item["id"] for item in body["inputs"]]


@pytest.fixture
def app_server() -> Iterator[tuple[str, App]]:
    app = App()

    class Handler(JsonHandler):
        def do_POST(self) -> None:
            app_id, ids = read_post(self)
            with app.lock:
                app.requests.append((self.path, self.headers["Authorization"], ids))
            if app_id in app.failing:
                self.send_json(503, {"status": {"code": 10020}})
                return
            if any(input_id.startswith("bad") for input_id in ids):
                self.send_json(400, {"status": {"code": 11102}})
                return
            items = [
                {
                    "id": input_id,
                    "status": {
                        "code": ALREADY_PRESENT if input_id in app.present else 10000
                    },
                }
                for input_id in ids
            ]
            mixed = any(input_id in app.present for input_id in ids)
            self.send_json(
                200, {"status": {"code": 10010 if mixed else 10000}, "inputs": items}
            )

    with serve_http(Handler) as url:
        yield url, app


def view(collector_id: str, app_id: str, key: str = "post-key") -> CollectorView:
    record = CollectorRecord(
        user_id="owner",
        app_id=app_id,
        id=collector_id,
        model_user_id="owner",
        model_app_id="models",
        model_id="classifier",
    )
    return CollectorView(record, record.key, key, None, None, ())


def items(prefix: str, count: int) -> list[dict[str, Any]]:
    return [
        {"id": f"{prefix}-{n}", "input": {"id": f"{prefix}-{n}", "data": {}}}
        for n in range(count)
    ]


def snapshot_of(*views: CollectorView) -> ConfigSnapshot:
    return ConfigSnapshot(by_key=MappingProxyType({v.key: v for v in views}))


async def deliver(
    url: str,
    views: list[CollectorView],
    batches: dict[str, list[dict[str, Any]]],
    merge_posts: bool = True,
) -> tuple[list[Any], WorkerStats]:
    stats = WorkerStats()
    destination = Destination(url, backoff_base_s=0.01, backoff_max_s=0.05)
    deliverer = Deliverer(
        destination, stats, inline_give_up_s=0.3, merge_posts=merge_posts
    )
    try:
        failures = await deliverer.deliver(batches, snapshot_of(*views))
    finally:
        await destination.aclose()
    return failures, stats


async def test_shared_app_and_key_share_requests(
    app_server: tuple[str, App],
) -> None:
    url, app = app_server
    first, second = view("first", "shared"), view("second", "shared")
    other_key = view("third", "shared", key="other-key")
    elsewhere = view("fourth", "elsewhere")
    views = [first, second, other_key, elsewhere]
    batches = {v.key: items(v.record.id, 3) for v in views}

    failures, stats = await deliver(url, views, batches)

    assert failures == []
    requests = sorted((path, auth, sorted(ids)) for path, auth, ids in app.requests)
    assert requests == [
        (
            "/v2/users/owner/apps/elsewhere/inputs",
            "Key post-key",
            ["fourth-0", "fourth-1", "fourth-2"],
        ),
        (
            "/v2/users/owner/apps/shared/inputs",
            "Key other-key",
            ["third-0", "third-1", "third-2"],
        ),
        (
            "/v2/users/owner/apps/shared/inputs",
            "Key post-key",
            sorted(f"{name}-{n}" for name in ("first", "second") for n in range(3)),
        ),
    ]
    assert {key: stats.funnel[key]["posted"] for key in batches} == dict.fromkeys(
        batches, 3
    )


async def test_unmerged_posts_give_each_collector_its_own_request(
    app_server: tuple[str, App],
) -> None:
    url, app = app_server
    views = [view("first", "shared"), view("second", "shared")]
    batches = {v.key: items(v.record.id, 2) for v in views}

    failures, _ = await deliver(url, views, batches, merge_posts=False)

    assert failures == []
    assert sorted(sorted(ids) for _, _, ids in app.requests) == [
        ["first-0", "first-1"],
        ["second-0", "second-1"],
    ]


async def test_merged_requests_hold_at_most_128_inputs(
    app_server: tuple[str, App],
) -> None:
    url, app = app_server
    views = [view("first", "shared"), view("second", "shared")]
    batches = {v.key: items(v.record.id, 100) for v in views}

    failures, stats = await deliver(url, views, batches)

    assert failures == []
    sizes = sorted(len(ids) for _, _, ids in app.requests)
    assert sizes == [200 - MAX_INPUTS_PER_REQUEST, MAX_INPUTS_PER_REQUEST]
    assert len(set(app.ids_by_app()["shared"])) == 200
    assert stats.funnel["owner/shared/first"]["posted"] == 100
    assert stats.funnel["owner/shared/second"]["posted"] == 100


async def test_already_present_inputs_count_for_their_own_collector(
    app_server: tuple[str, App],
) -> None:
    url, app = app_server
    app.present = {"second-0", "second-1"}
    views = [view("first", "shared"), view("second", "shared")]
    batches = {v.key: items(v.record.id, 3) for v in views}

    failures, stats = await deliver(url, views, batches)

    assert failures == []
    assert len(app.requests) == 1
    first, second = (
        stats.funnel["owner/shared/first"],
        stats.funnel["owner/shared/second"],
    )
    assert (first["posted"], first["already_present"]) == (3, 0)
    assert (second["posted"], second["already_present"]) == (1, 2)


async def test_failed_shared_request_fails_per_collector(
    app_server: tuple[str, App],
) -> None:
    url, app = app_server
    app.failing = {"shared"}
    views = [view("first", "shared"), view("second", "shared"), view("ok", "fine")]
    batches = {
        "owner/shared/first": items("first", 2),
        "owner/shared/second": items("second", 1),
        "owner/fine/ok": items("ok", 1),
    }

    failures, stats = await deliver(url, views, batches)

    by_collector = {f.collector_key: f for f in failures}
    assert sorted(by_collector) == ["owner/shared/first", "owner/shared/second"]
    assert [i["id"] for i in by_collector["owner/shared/first"].items] == [
        "first-0",
        "first-1",
    ]
    assert [i["id"] for i in by_collector["owner/shared/second"].items] == ["second-0"]
    assert all(f.retriable and f.payload_kind == "inputs" for f in failures)
    assert stats.funnel["owner/shared/first"]["failed"] == 2
    assert stats.funnel["owner/shared/second"]["failed"] == 1
    assert stats.funnel["owner/fine/ok"]["posted"] == 1


async def test_rejected_merged_request_fails_only_the_invalid_input(
    app_server: tuple[str, App],
) -> None:
    url, app = app_server
    views = [view("first", "shared"), view("second", "shared")]
    batches = {
        "owner/shared/first": items("first", 2),
        "owner/shared/second": [*items("second", 1), *items("bad", 1)],
    }

    failures, stats = await deliver(url, views, batches)

    assert len(failures) == 1
    (failure,) = failures
    assert failure.collector_key == "owner/shared/second"
    assert [i["id"] for i in failure.items] == ["bad-0"]
    assert not failure.retriable
    assert failure.reason.startswith("1 of 2 inputs failed; first: POST")
    assert stats.funnel["owner/shared/first"]["posted"] == 2
    assert stats.funnel["owner/shared/second"]["posted"] == 1
    assert stats.funnel["owner/shared/second"]["failed"] == 1
    # The merged request, then each of its four inputs alone.
    assert [len(ids) for _, _, ids in app.requests] == [4, 1, 1, 1, 1]


async def test_inactive_and_deleted_collectors_are_not_posted(
    app_server: tuple[str, App],
) -> None:
    url, app = app_server
    active = view("active", "shared")
    paused_record = view("paused", "shared").record.model_copy(
        update={"status_code": COLLECTOR_INACTIVE}
    )
    paused = CollectorView(paused_record, paused_record.key, "post-key", None, None, ())
    batches = {
        active.key: items("active", 1),
        paused.key: items("paused", 1),
        "owner/shared/deleted": items("deleted", 1),
    }

    failures, stats = await deliver(url, [active, paused], batches)

    assert failures == []
    assert [ids for _, _, ids in app.requests] == [["active-0"]]
    assert stats.funnel[paused.key]["dropped_inactive"] == 1
    assert stats.funnel["owner/shared/deleted"]["dropped_inactive"] == 1
