"""Entry point of `collectors worker`: wires the pieces and runs the Faust worker.

Read next: agents/app.py (agents), agents/routing.py (stage one),
agents/delivery.py (stage two), app/config_cache.py (configuration).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import faust
import httpx

from agents.app import create_app
from agents.delivery import Deliverer, RemoteModelCall
from agents.routing import Router, native_available
from agents.stateful import StatefulGate
from agents.stats import WorkerStats
from agents.topics import ensure_topics
from agents.web import add_web_views
from app.config_cache import ConfigCache
from app.destination import Destination
from app.remote_models import predict_remote
from app.security import load_secret_box
from app.settings import Settings
from app.store import Store, connect
from rules.context import Data

logger = logging.getLogger(__name__)


def build_worker_app(settings: Settings) -> faust.App:
    stats = WorkerStats()
    store = Store(connect(settings.redis_url))
    cache = ConfigCache(
        store, load_secret_box(settings), settings.config_poll_interval_s
    )
    destination = Destination(
        settings.destination_url,
        timeout_s=settings.destination_timeout_s,
        give_up_s=settings.destination_give_up_s,
        max_in_flight=settings.destination_max_in_flight,
        http_client=settings.http_client,
    )
    model_client = httpx.AsyncClient(timeout=settings.model_timeout_s)
    deliverer = Deliverer(
        destination,
        stats,
        _remote_model_caller(settings, model_client),
        inline_give_up_s=settings.destination_inline_retry_s,
        gate=StatefulGate(store.redis, stats),
        merge_posts=settings.destination_merge_posts,
    )
    native = settings.stage_one == "c" and native_available()
    if settings.stage_one == "c" and not native:
        logger.warning(
            "the C extension agents._stage_one is not built, so stage one runs in"
            " Python; `pip install -e .` with a C compiler builds it"
        )
    logger.info("stage one runs in %s", "C" if native else "Python")
    router = Router(settings.max_event_bytes, stats, native=native, defer_counts=True)
    app = create_app(settings, cache, router, deliverer, stats)
    add_web_views(app, cache, stats)
    return app


def _remote_model_caller(
    settings: Settings, client: httpx.AsyncClient
) -> RemoteModelCall:
    async def call(model: Mapping[str, Any], input_document: Mapping[str, Any]) -> Data:
        return await predict_remote(
            client,
            model,
            input_document,
            settings.model_timeout_s,
            allowed_urls=settings.allowed_model_urls,
        )

    return call


def run_worker(settings: Settings) -> None:
    """Create the topics, then run the worker until SIGINT or SIGTERM."""
    _use_event_loop(settings.event_loop)
    (settings.faust_data_dir / settings.consumer_group).mkdir(
        parents=True, exist_ok=True
    )
    asyncio.run(ensure_topics(settings))
    app = build_worker_app(settings)
    worker = faust.Worker(
        app,
        loglevel=settings.log_level,
        quiet=True,
    )
    worker.execute_from_commandline()


def _use_event_loop(name: str) -> None:
    """Install uvloop's event loop policy when asked for and installed."""
    if name != "uvloop":
        return
    try:
        import uvloop
    except ImportError:
        logger.warning("COLLECTORS_EVENT_LOOP=uvloop, but uvloop is not installed")
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
