"""Collectors and pre-queue workflows for a benchmark run, written straight to Redis.

Collector `i` watches watched model `i % 100`, so every model has
`k = max(1, n / 100)` collectors, and four collectors share a dataset app. A run
has a target survival `s`: the queue items stage one enqueues per matched
prediction. Each collector therefore keeps a fraction `f = s / k` of its model's
predictions, in one of four ways (collector `i` uses way `(i // 100) % 4`), each
with a workflow of its own:

- random: `pre_queue_random_sample = f`;
- uncertain: a max-probability-below workflow whose threshold is the `f` quantile
  of the model's max probability;
- thresholder: a concept-thresholder workflow on the model's first concept, with a
  GREATER_THAN_OR_EQUAL threshold at its `1 - f` quantile;
- mixed: `pre_queue_random_sample = sqrt(f)` and a max-probability-below workflow
  at the `sqrt(f)` quantile.

Thresholds are quantiles of the whole data set, so the measured survival comes
close to `s`. It is coarser for the smallest fractions (0.1 % of a model's 5,000
predictions is 5 of them). Every fifth collector
also pins the model version, and every tenth collects the outputs.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from app.models import CollectorRecord, Workflow
from app.security import SecretBox
from app.store import Store
from bench.dataset import WATCHED_MODELS, ModelInfo, models

BENCH_SECRET = "bench-secret-not-for-production"
WAYS = ("random", "uncertain", "thresholder", "mixed")


@dataclass(frozen=True, slots=True)
class ModelQuantiles:
    """Sorted samples of one model's max probability and first concept's value."""

    max_values: list[float]
    first_values: list[float]


def measure_quantiles(events: Iterable[dict[str, Any]]) -> dict[str, ModelQuantiles]:
    """Collect each model's samples (by model id) from decoded events."""
    max_values: defaultdict[str, list[float]] = defaultdict(list)
    first_values: defaultdict[str, list[float]] = defaultdict(list)
    first_concept = {model.model_id: model.concept_ids[0] for model in models()}
    for event in events:
        for output in event["outputs"]:
            model_id = output["model"]["id"]
            concepts = output["data"]["concepts"]
            max_values[model_id].append(max(c["value"] for c in concepts))
            first_values[model_id].extend(
                c["value"] for c in concepts if c["id"] == first_concept[model_id]
            )
    return {
        model_id: ModelQuantiles(
            sorted(max_values[model_id]), sorted(first_values[model_id])
        )
        for model_id in max_values
    }


def _quantile(values: list[float], fraction: float) -> float:
    """Return the value below which about `fraction` of `values` lie."""
    if fraction >= 1.0:
        return 1.0
    index = min(len(values) - 1, max(0, round(fraction * len(values))))
    return values[index]


def _max_probability_below(workflow_id: str, threshold: float) -> Workflow:
    return Workflow.model_validate(
        {
            "id": workflow_id,
            "nodes": [
                {
                    "id": "uncertain",
                    "model": {
                        "id": "max-probability-below",
                        "model_type_id": "max-probability-below",
                        "output_info": {"params": {"threshold": threshold}},
                    },
                }
            ],
        }
    )


def _concept_thresholder(
    workflow_id: str, concept_id: str, threshold: float
) -> Workflow:
    return Workflow.model_validate(
        {
            "id": workflow_id,
            "nodes": [
                {
                    "id": "confident",
                    "model": {
                        "id": "concept-thresholder",
                        "model_type_id": "concept-thresholder",
                        "output_info": {
                            "data": {
                                "concepts": [{"id": concept_id, "value": threshold}]
                            },
                            "params": {
                                "concept_threshold_type": "GREATER_THAN_OR_EQUAL"
                            },
                        },
                    },
                }
            ],
        }
    )


COLLECTORS_PER_APP = 4


def app_of(model: ModelInfo, index: int) -> tuple[str, str]:
    """Return the (user id, app id) of collector `index`, which watches `model`.

    An app belongs to the model's owner, because a collector on someone else's
    model takes only the predict calls of its own owner. Collectors `i`, `i + 10`,
    `i + 20` and `i + 30` (the same owner) share an app, and every collector has
    workflows of its own, so no two collectors share a compiled workflow.
    """
    app_number = (index // 40) * 10 + index % 10
    return (model.user_id, f"dataset-{app_number:04d}")


def build(
    collector_count: int, survival: float, quantiles: dict[str, ModelQuantiles]
) -> tuple[list[CollectorRecord], dict[tuple[str, str], list[Workflow]]]:
    """Return the collectors and each app's workflows for one configuration."""
    watched = models()[:WATCHED_MODELS]
    per_model = max(1, collector_count // WATCHED_MODELS)
    keep_fraction = min(1.0, survival / per_model)
    root = math.sqrt(keep_fraction)
    encrypted_key = SecretBox(BENCH_SECRET).encrypt("bench-destination-key")

    records = []
    workflows: dict[tuple[str, str], list[Workflow]] = {}
    for index in range(collector_count):
        model = watched[index % WATCHED_MODELS]
        samples = quantiles[model.model_id]
        user_id, app_id = app_of(model, index)
        way = WAYS[(index // WATCHED_MODELS) % len(WAYS)]
        workflow_id = f"{way}-{index:05d}"
        fields: dict[str, Any] = {
            "user_id": user_id,
            "app_id": app_id,
            "id": f"collector-{index:05d}",
            "model_user_id": model.user_id,
            "model_app_id": model.app_id,
            "model_id": model.model_id,
            "model_version_id": model.version_id if index % 5 == 0 else "",
            "collect_outputs": index % 10 == 0,
            "post_inputs_key_encrypted": encrypted_key,
        }
        workflow = None
        if way == "random":
            fields["pre_queue_random_sample"] = keep_fraction
        elif way == "uncertain":
            threshold = _quantile(samples.max_values, keep_fraction)
            workflow = _max_probability_below(workflow_id, threshold)
        elif way == "thresholder":
            threshold = _quantile(samples.first_values, 1.0 - keep_fraction)
            workflow = _concept_thresholder(
                workflow_id, model.concept_ids[0], threshold
            )
        else:
            fields["pre_queue_random_sample"] = root
            workflow = _max_probability_below(
                workflow_id, _quantile(samples.max_values, root)
            )
        if workflow is not None:
            fields["pre_queue_workflow_id"] = workflow_id
            workflows.setdefault((user_id, app_id), []).append(workflow)
        records.append(CollectorRecord(**fields))
    return records, workflows


async def write(
    store: Store,
    records: list[CollectorRecord],
    workflows: dict[tuple[str, str], list[Workflow]],
) -> None:
    """Write workflows first, so that no collector ever names a missing one."""
    for (user_id, app_id), items in workflows.items():
        await store.create_workflows(user_id, app_id, items)
    for start in range(0, len(records), 1000):
        await store.create_collectors(records[start : start + 1000])
