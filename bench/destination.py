"""A fast Clarifai-compatible `POST /v2/users/{user}/apps/{app}/inputs` endpoint.

Run as `python -m bench.destination PORT` in a process of its own, so that it does
not share a core's time slices with the worker or the load generator inside one
interpreter. For every input whose metadata carries `bench_created_at_s` (the
event's creation time in Unix seconds, set by the load generator), it stores that
time and the latency from it to the moment it sends its response. `GET /stats`
returns the counts and those pairs, and `POST /reset` clears them.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import orjson
from aiohttp import web

CREATED_AT_KEY = "bench_created_at_s"


class Recorder:
    def __init__(self) -> None:
        self.requests = 0
        self.inputs = 0
        # (creation time in Unix seconds, latency in seconds) per stamped input.
        self.latencies_s: list[tuple[float, float]] = []

    async def post_inputs(self, request: web.Request) -> web.Response:
        document = orjson.loads(await request.read())
        inputs = document.get("inputs", [])
        self.requests += 1
        self.inputs += len(inputs)
        answer = orjson.dumps(
            {
                "status": {"code": 10000, "description": "Ok"},
                "inputs": [
                    {"id": item["id"], "status": {"code": 10000}} for item in inputs
                ],
            }
        )
        now = time.time()
        for item in inputs:
            metadata = item.get("data", {}).get("metadata") or {}
            created_at_s = metadata.get(CREATED_AT_KEY)
            if isinstance(created_at_s, float):
                self.latencies_s.append((created_at_s, now - created_at_s))
        return web.Response(body=answer, content_type="application/json")

    async def stats(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = {
            "requests": self.requests,
            "inputs": self.inputs,
            "latencies_s": self.latencies_s,
        }
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def reset(self, request: web.Request) -> web.Response:
        self.requests = 0
        self.inputs = 0
        self.latencies_s = []
        return web.Response(body=b"{}", content_type="application/json")


def main(port: int) -> None:
    recorder = Recorder()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post(
        "/v2/users/{user_id}/apps/{app_id}/inputs", recorder.post_inputs
    )
    app.router.add_get("/stats", recorder.stats)
    app.router.add_post("/reset", recorder.reset)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main(int(sys.argv[1]))
