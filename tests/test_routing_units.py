"""Stage one in process: per-rule drop counts and the funnel of one event."""

from __future__ import annotations

from types import MappingProxyType

from agents.routing import Router, RouteResult
from agents.stats import WorkerStats
from app.config_cache import CollectorView, ConfigSnapshot
from app.models import CollectorRecord
from rules.workflow import compile_workflow
from tests.harness import event, output


def threshold_node(
    node_id: str, model_type_id: str, threshold: float
) -> dict[str, object]:
    return {
        "id": node_id,
        "model": {
            "id": node_id,
            "model_type_id": model_type_id,
            "output_info": {"params": {"threshold": threshold}},
        },
    }


def test_router_counts_drops_per_rule() -> None:
    workflow = compile_workflow(
        {
            "id": "chain",
            "nodes": [
                threshold_node("below-0-8", "max-probability-below", 0.8),
                {
                    **threshold_node("above-0-3", "min-probability-above", 0.3),
                    "node_inputs": [{"node_id": "below-0-8"}],
                },
            ],
        }
    )
    record = CollectorRecord(
        user_id="owner",
        app_id="a",
        id="c",
        model_user_id="owner",
        model_app_id="models",
        model_id="classifier",
        pre_queue_workflow_id="chain",
    )
    view = CollectorView(record, record.key, "", workflow, None, ())
    snapshot = ConfigSnapshot(
        by_key=MappingProxyType({view.key: view}),
        by_source=MappingProxyType({record.source_key: (view,)}),
    )
    stats = WorkerStats()
    result = RouteResult()
    outputs = [
        output("sure", concepts=[("cat", 0.9)]),  # dropped by below-0-8
        output("unsure", concepts=[("cat", 0.5), ("dog", 0.4)]),  # kept
        output("low", concepts=[("cat", 0.5), ("dog", 0.1)]),  # dropped by above-0-3
        output("low-2", concepts=[("cat", 0.2)]),  # dropped by above-0-3
    ]
    Router(1_000_000, stats).route(event("e1", outputs), snapshot, result)

    assert stats.rule_drops == {
        ("owner/a/c", "below-0-8"): 1,
        ("owner/a/c", "above-0-3"): 2,
    }
    assert stats.funnel["owner/a/c"]["matched"] == 4
    assert stats.funnel["owner/a/c"]["dropped_pre_queue"] == 3
    assert stats.funnel["owner/a/c"]["enqueued"] == 1
    assert [item["input"]["id"] for item in result.batches["owner/a/c"]] == ["unsure"]
