"""`make demo`: the whole loop on real model predictions.

It trains a small classifier on half of scikit-learn's handwritten digits, predicts
the other half in calls of a few images each (as a model server would), publishes one
prediction event per call, and lets a collector keep the uncertain predictions (max
probability below a threshold). It then reads the collected inputs back from the
destination app with ListInputs and compares the model's error rate on them with its
error rate on all inputs. Services it finds stopped are started and stopped again.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import random
import socket
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from app.keys import create_api_key
from app.produce import EventPublisher
from app.settings import Settings

REPO = Path(__file__).resolve().parent.parent
LOG_DIR = REPO / ".data" / "demo"
USER_ID = "demo"
MODEL = {"user_id": "demo", "app_id": "models", "id": "digits", "version": "v1"}
THRESHOLD = 0.8
SEED = 7


def main() -> int:
    settings = Settings()
    started_services = _start_services(settings)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        processes.extend(_start_processes(settings))
        return asyncio.run(_run(settings, processes))
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
        if started_services:
            subprocess.run([REPO / "scripts" / "services.sh", "down"], check=False)


async def _run(settings: Settings, processes: list[subprocess.Popen[bytes]]) -> int:
    app_id = f"digits-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    key = await create_api_key(settings, USER_ID, app_id, ["All"], pat=False)
    async with httpx.AsyncClient(
        base_url=_api_url(settings), headers={"Authorization": f"Key {key}"}, timeout=30
    ) as api:
        await _wait_for_api(api, processes)
        await _create_collector(api, app_id, key)

        print("training a classifier on half of the digits ...")
        calls, truth, predicted = _predict_digits()
        events = [_event(call) for call in calls]
        async with EventPublisher(settings) as publisher:
            for prediction_event in events:
                await publisher.publish(prediction_event)
        print(f"published {len(events)} events with {len(truth)} predictions")

        expected = sum(
            1
            for call in calls
            for item in call
            if max(item["probabilities"]) < THRESHOLD
        )
        collected = await _wait_for_inputs(api, app_id, expected, processes)

    overall_error = float(np.mean(np.array(truth) != np.array(predicted)))
    collected_error = _error_rate(collected)
    print()
    print(f"events published:            {len(events)}")
    print(f"predictions:                 {len(truth)}")
    print(f"inputs collected:            {len(collected)} (expected {expected})")
    print(f"error rate on all inputs:    {overall_error:.1%}")
    print(f"error rate on the collected: {collected_error:.1%}")
    print(f"destination app:             {USER_ID}/{app_id}")
    return 0 if len(collected) == expected else 1


def _start_processes(settings: Settings) -> list[subprocess.Popen[bytes]]:
    """Start `collectors api` and `collectors worker`, logging into .data/demo."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, "COLLECTORS_DESTINATION_URL": _api_url(settings)}
    processes = []
    for command in ("api", "worker"):
        with (LOG_DIR / f"{command}.log").open("wb") as log:
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "app.cli", command],
                    cwd=REPO,
                    env=environment,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    print(f"logs of the API server and the worker: {LOG_DIR}")
    return processes


def _predict_digits() -> tuple[list[list[dict[str, Any]]], list[int], list[int]]:
    """Train on half of the digits and predict the rest in calls of 1 to 8 images."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    digits = load_digits()
    count = len(digits.images)
    order = np.random.default_rng(SEED).permutation(count)
    train, test = order[: count // 2], order[count // 2 :]
    model = LogisticRegression(max_iter=2000)
    model.fit(digits.data[train], digits.target[train])
    probabilities = model.predict_proba(digits.data[test])

    rng = random.Random(SEED)
    calls: list[list[dict[str, Any]]] = []
    position = 0
    while position < len(test):
        size = rng.randint(1, 8)
        call = []
        for offset in range(position, min(position + size, len(test))):
            index = int(test[offset])
            call.append(
                {
                    "input_id": f"digit-{index}",
                    "png": _png_base64(digits.images[index]),
                    "label": int(digits.target[index]),
                    "probabilities": [float(p) for p in probabilities[offset]],
                }
            )
        calls.append(call)
        position += size
    truth = [int(digits.target[int(i)]) for i in test]
    predicted = [int(p) for p in probabilities.argmax(axis=1)]
    return calls, truth, predicted


def _png_base64(image: np.ndarray) -> str:
    from PIL import Image

    pixels = (255 - image * 16).clip(0, 255).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").resize((32, 32), Image.NEAREST).save(
        buffer, "PNG"
    )
    return base64.b64encode(buffer.getvalue()).decode()


def _event(call: list[dict[str, Any]]) -> dict[str, Any]:
    """Build the event for one predict call, shaped like a PostModelOutputs response."""
    outputs = []
    for item in call:
        concepts = [
            {"id": f"digit-{digit}", "name": str(digit), "value": round(value, 6)}
            for digit, value in enumerate(item["probabilities"])
        ]
        concepts.sort(key=lambda concept: concept["value"], reverse=True)
        outputs.append(
            {
                "id": uuid.uuid4().hex,
                "status": {"code": 10000, "description": "Ok"},
                "created_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                "model": {
                    "id": MODEL["id"],
                    "user_id": MODEL["user_id"],
                    "app_id": MODEL["app_id"],
                    "model_version": {"id": MODEL["version"]},
                },
                "input": {
                    "id": item["input_id"],
                    "data": {
                        "image": {"base64": item["png"]},
                        # The true label rides along only so that the demo can
                        # measure error rates; a model server does not know it.
                        "metadata": {"true_label": item["label"]},
                    },
                },
                "data": {"concepts": concepts},
            }
        )
    return {
        "id": uuid.uuid4().hex,
        "created_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "caller": {"user_id": USER_ID},
        "outputs": outputs,
    }


async def _create_collector(api: httpx.AsyncClient, app_id: str, key: str) -> None:
    base = f"/v2/users/{USER_ID}/apps/{app_id}"
    workflow = {
        "id": "uncertain",
        "nodes": [
            {
                "id": "max-below",
                "model": {
                    "id": "max-probability-below",
                    "model_type_id": "max-probability-below",
                    "output_info": {"params": {"threshold": THRESHOLD}},
                },
            }
        ],
    }
    _check(await api.post(f"{base}/workflows", json={"workflows": [workflow]}))
    collector = {
        "id": "uncertain-digits",
        "description": f"predictions whose max probability is below {THRESHOLD}",
        "pre_queue_workflow_id": "uncertain",
        "collect_outputs": True,
        "collector_source": {
            "api_post_model_outputs_collector_source": {
                "model_user_id": MODEL["user_id"],
                "model_app_id": MODEL["app_id"],
                "model_id": MODEL["id"],
                "post_inputs_key_id": key,
            }
        },
    }
    _check(await api.post(f"{base}/collectors", json={"collectors": [collector]}))
    print(f"created collector uncertain-digits in app {USER_ID}/{app_id}")


async def _wait_for_inputs(
    api: httpx.AsyncClient,
    app_id: str,
    expected: int,
    processes: list[subprocess.Popen[bytes]],
    deadline_s: float = 240.0,
) -> list[dict[str, Any]]:
    """Poll ListInputs until the expected count arrives and stays for 3 s."""
    end = time.monotonic() + deadline_s
    inputs: list[dict[str, Any]] = []
    stable_since = time.monotonic()
    while time.monotonic() < end:
        _check_alive(processes)
        current = await _list_inputs(api, app_id)
        if len(current) != len(inputs):
            inputs, stable_since = current, time.monotonic()
            print(f"  {len(inputs)} inputs collected so far")
        if len(inputs) >= expected and time.monotonic() - stable_since > 3.0:
            return inputs
        await asyncio.sleep(1.0)
    print(f"gave up waiting after {deadline_s:.0f} s", file=sys.stderr)
    return inputs


async def _list_inputs(api: httpx.AsyncClient, app_id: str) -> list[dict[str, Any]]:
    inputs: list[dict[str, Any]] = []
    page = 1
    while True:
        response = await api.get(
            f"/v2/users/{USER_ID}/apps/{app_id}/inputs",
            params={"page": page, "per_page": 1000},
        )
        batch = _check(response).get("inputs", [])
        inputs.extend(batch)
        if len(batch) < 1000:
            return inputs
        page += 1


def _error_rate(inputs: list[dict[str, Any]]) -> float:
    if not inputs:
        return 0.0
    wrong = 0
    for item in inputs:
        data = item["data"]
        concepts = data.get("concepts", [])
        best = max(concepts, key=lambda concept: concept.get("value", 0.0))
        wrong += int(best["name"]) != data["metadata"]["true_label"]
    return wrong / len(inputs)


def _check(response: httpx.Response) -> dict[str, Any]:
    document: dict[str, Any] = response.json()
    if document.get("status", {}).get("code") != 10000:
        request = response.request
        status = document.get("status")
        raise SystemExit(f"{request.method} {request.url.path} failed: {status}")
    return document


async def _wait_for_api(
    api: httpx.AsyncClient, processes: list[subprocess.Popen[bytes]]
) -> None:
    for _ in range(120):
        _check_alive(processes)
        try:
            await api.get("/v2/myscopes")
            return
        except httpx.TransportError:
            await asyncio.sleep(0.5)
    raise SystemExit("the API server did not start within 60 s; see .data/demo/api.log")


def _check_alive(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is not None:
            raise SystemExit(
                f"{' '.join(map(str, process.args))} exited; see .data/demo/"
            )


def _api_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.http_port}"


def _start_services(settings: Settings) -> bool:
    """Run `scripts/services.sh up` unless Kafka and Redis accept connections; return
    whether
    it ran."""
    if _port_open(9092) and _port_open(6379):
        return False
    subprocess.run([REPO / "scripts" / "services.sh", "up"], check=True)
    return True


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


if __name__ == "__main__":
    sys.exit(main())
