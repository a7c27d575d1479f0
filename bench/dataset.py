"""The benchmark's prediction events, generated from a fixed seed.

Each event is one predict call to one model, with 1 to 32 outputs (uniformly
distributed), shaped like a PostModelOutputs response. An output is about 1 KB:
5 to 15 concepts with softmax probabilities, an input with an image URL (most),
a short text or a small base64 image, and some metadata. Events come from
`WATCHED_MODELS` models that collectors watch and `UNWATCHED_MODELS` that none
does. About one event in 2,000 has an invalid output, which the worker
dead-letters.
"""

from __future__ import annotations

import base64
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

SEED = 20261204
WATCHED_MODELS = 100
UNWATCHED_MODELS = 10
MAX_OUTPUTS_PER_EVENT = 32
CALLERS = tuple(f"service-{number:02d}" for number in range(20))
INVALID_EVENT_EVERY = 2000
FAILED_OUTPUT_FRACTION = 0.01
# Clarifai's status code for a failed prediction (MODEL_PREDICTION_FAILED).
FAILED_STATUS_CODE = 21100
_EPOCH = datetime(2026, 12, 4, 8, 0, tzinfo=UTC)
_WORDS = (
    "forklift pallet aisle helmet vest dock truck conveyor shelf crate ladder "
    "spill door worker camera night shift north south loading label box"
).split()


@dataclass(frozen=True, slots=True)
class ModelInfo:
    user_id: str
    app_id: str
    model_id: str
    version_id: str
    concept_ids: tuple[str, ...]
    # Softmax temperature: higher spreads the probabilities, so max values drop.
    temperature: float

    @property
    def source(self) -> tuple[str, str, str]:
        return (self.user_id, self.app_id, self.model_id)


def models() -> list[ModelInfo]:
    """Return the watched models first, then the unwatched ones."""
    rng = random.Random(SEED)
    result = []
    for number in range(WATCHED_MODELS + UNWATCHED_MODELS):
        concept_count = rng.randint(5, 15)
        result.append(
            ModelInfo(
                user_id=f"vision-{number % 10}",
                app_id="models",
                model_id=f"model-{number:03d}",
                version_id=f"v{number % 3 + 1}",
                concept_ids=tuple(
                    f"m{number:03d}-{_WORDS[(number + k) % len(_WORDS)]}-{k}"
                    for k in range(concept_count)
                ),
                temperature=rng.uniform(0.6, 2.5),
            )
        )
    return result


def _concepts(rng: random.Random, model: ModelInfo) -> list[dict[str, Any]]:
    logits = [rng.gauss(0.0, 1.0) / model.temperature * 3 for _ in model.concept_ids]
    top = max(logits)
    weights = [math.exp(logit - top) for logit in logits]
    total = sum(weights)
    concepts: list[dict[str, Any]] = [
        {
            "id": concept_id,
            "name": concept_id.split("-", 1)[1],
            # Rounded like a float32 printed with 6 decimals, and never exactly 1.
            "value": min(round(weight / total, 6), 0.999999),
        }
        for concept_id, weight in zip(model.concept_ids, weights, strict=True)
    ]
    concepts.sort(key=lambda concept: concept["value"], reverse=True)
    return concepts


def _input(rng: random.Random, input_id: str, moment: datetime) -> dict[str, Any]:
    site = rng.randrange(40)
    metadata = {
        "site": f"site-{site:02d}",
        "camera": {
            "id": f"cam-{site:02d}-{rng.randrange(8)}",
            "zone": rng.choice(_WORDS),
        },
        "frame": rng.randrange(1_000_000),
        "tags": rng.sample(_WORDS, rng.randint(0, 3)),
    }
    kind = rng.random()
    data: dict[str, Any]
    if kind < 0.85:
        data = {
            "image": {
                "url": f"https://images.example.com/{metadata['site']}/"
                f"{moment:%Y/%m/%d}/{input_id}.jpg"
            }
        }
    elif kind < 0.95:
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 25)))
        data = {"text": {"raw": words}}
    else:
        pixels = rng.randbytes(150)
        data = {"image": {"base64": base64.b64encode(pixels).decode()}}
    data["metadata"] = metadata
    return {"id": input_id, "data": data}


def _output(
    rng: random.Random, model: ModelInfo, moment: datetime, failed: bool
) -> dict[str, Any]:
    input_id = f"{rng.getrandbits(64):016x}"
    return {
        "id": f"{rng.getrandbits(128):032x}",
        "status": (
            {"code": FAILED_STATUS_CODE, "description": "Model prediction failed"}
            if failed
            else {"code": 10000, "description": "Ok"}
        ),
        "created_at": moment.isoformat().replace("+00:00", "Z"),
        "model": {
            "id": model.model_id,
            "user_id": model.user_id,
            "app_id": model.app_id,
            "name": model.model_id,
            "model_version": {"id": model.version_id},
        },
        "input": _input(rng, input_id, moment),
        "data": {"concepts": _concepts(rng, model)},
    }


def events(count: int, seed: int = SEED) -> Iterator[dict[str, Any]]:
    """Yield `count` events; the same arguments always yield the same events."""
    rng = random.Random(seed)
    all_models = models()
    for number in range(count):
        model = rng.choice(all_models)
        moment = _EPOCH + timedelta(milliseconds=number)
        outputs = [
            _output(rng, model, moment, rng.random() < FAILED_OUTPUT_FRACTION)
            for _ in range(rng.randint(1, MAX_OUTPUTS_PER_EVENT))
        ]
        if number % INVALID_EVENT_EVERY == INVALID_EVENT_EVERY - 1:
            # A concept value out of [0, 1]: the worker dead-letters this output.
            outputs[-1]["data"]["concepts"][0]["value"] = 1.5
        yield {
            "id": f"bench-{seed}-{number}",
            "created_at": moment.isoformat().replace("+00:00", "Z"),
            "caller": {"user_id": rng.choice(CALLERS)},
            "outputs": outputs,
        }


def encode(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event)
