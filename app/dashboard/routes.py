"""The operator dashboard on the API's REST port.

`/dashboard` is a static page whose script polls `/dashboard/api/state` every few
seconds. `/dashboard/static/` serves its script and style sheet, so the page loads
nothing from other hosts, and its Content-Security-Policy allows only this origin.

The dashboard asks for no API key: it shows operational data of every app (ids,
counts, offsets, never a credential). Bind the API to loopback (the default
COLLECTORS_HTTP_HOST) or put it behind a proxy that authenticates operators.
"""

from __future__ import annotations

from pathlib import Path

import orjson
from fastapi import FastAPI
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

from app.api.context import Services
from app.dashboard.state import build_state
from app.lag import LagReader

STATIC_DIR = Path(__file__).resolve().parent / "static"
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; "
        "connect-src 'self'; img-src 'self'; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'none'"
    ),
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def add_dashboard_routes(
    app: FastAPI, services: Services, lag_reader: LagReader
) -> None:
    """Mount the dashboard page, its static files and its JSON endpoint."""

    async def page() -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)

    async def state() -> Response:
        document = await build_state(services.settings, services.store, lag_reader)
        return Response(
            orjson.dumps(document),
            media_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    for path in ("/dashboard", "/dashboard/"):
        app.add_api_route(path, page, methods=["GET"], include_in_schema=False)
    app.add_api_route(
        "/dashboard/api/state", state, methods=["GET"], include_in_schema=False
    )
    app.mount(
        "/dashboard/static",
        StaticFiles(directory=STATIC_DIR),
        name="dashboard-static",
    )
