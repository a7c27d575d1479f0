"""The operator dashboard against a real API with real data: its JSON state, its
self-served assets, and the page rendered by headless Chromium at 1366x768.

Chromium comes from the system (`apt-get install chromium`). Without it these
tests are skipped on a developer machine and fail in CI (where CI is set).
Set COLLECTORS_DASHBOARD_SCREENSHOT to a file path to keep a copy of the
screenshot.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from PIL import Image

if TYPE_CHECKING:
    from tests.observability_fixtures import Deployment

# Loaded as a plugin by name and not imported above, because pytest must import a
# plugin module first to rewrite its asserts, and otherwise warns (an error here).
pytest_plugins = ("tests.observability_fixtures",)

VIEWPORT = (1366, 768)
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
SERIES = ("events_in", "matched", "enqueued", "posted", "failed", "dead_lettered")


# --- Chromium and the DOM -------------------------------------------------------------


def chromium() -> str:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    message = "Chromium is not installed; install it with `apt-get install chromium`"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def run_chromium(profile_dir: Path, url: str, *args: str) -> str:
    """Load `url` headless at the test viewport and let its scripts run for a few
    seconds of virtual time; return stdout."""
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile_dir}",
        f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}",
        "--hide-scrollbars",
        "--virtual-time-budget=5000",
        *args,
        url,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    children: list[Element] = field(default_factory=list)
    text_parts: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.text_parts) + "".join(c.text for c in self.children)

    def iter(self) -> list[Element]:
        found = [self]
        for child in self.children:
            found.extend(child.iter())
        return found

    def find_all(self, tag: str, **attrs: str) -> list[Element]:
        return [
            e
            for e in self.iter()
            if e.tag == tag
            and all(e.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())
        ]

    def by_id(self, element_id: str) -> Element:
        (element,) = [e for e in self.iter() if e.attrs.get("id") == element_id]
        return element


class TreeBuilder(HTMLParser):
    VOID = frozenset(("meta", "link", "br", "col", "img", "input", "hr"))

    def __init__(self) -> None:
        super().__init__()
        self.root = Element("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(element)
        if tag not in self.VOID:
            self.stack.append(element)

    def handle_endtag(self, tag: str) -> None:
        for index in range(len(self.stack) - 1, 0, -1):
            if self.stack[index].tag == tag:
                del self.stack[index:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].text_parts.append(data)


def parse(html: str) -> Element:
    builder = TreeBuilder()
    builder.feed(html)
    return builder.root


def number(text: str) -> int:
    return int(text.replace(",", "").strip())


# --- tests ----------------------------------------------------------------------------


def test_dashboard_serves_its_own_assets(deployment: Deployment) -> None:
    base_url = deployment.api.base_url
    page = httpx.get(f"{base_url}/dashboard", timeout=10)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "style-src 'self'" in policy
    assert "connect-src 'self'" in policy

    references = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert len(references) == 3, references
    expected_types = {".js": "javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    for reference in references:
        assert reference.startswith("/dashboard/static/"), reference
        asset = httpx.get(f"{base_url}{reference}", timeout=10)
        assert asset.status_code == 200, reference
        suffix = Path(reference).suffix
        assert expected_types[suffix] in asset.headers["content-type"], reference
        urls = re.findall(r"https?://[^\s\"')]+", asset.text)
        assert set(urls) <= {"http://www.w3.org/2000/svg"}, (reference, urls)


def test_dashboard_state_matches_events(deployment: Deployment) -> None:
    url = f"{deployment.api.base_url}/dashboard/api/state"
    state = httpx.get(url, timeout=30).json()
    assert state["group"] == deployment.name
    assert state["sources"] == {"kafka": {"ok": True}, "redis": {"ok": True}}
    assert {c["key"] for c in state["collectors"]} == set(deployment.funnels)
    for collector in state["collectors"]:
        expected = deployment.funnels[collector["key"]]
        assert {step: collector["funnel"][step] for step in expected} == expected
        assert collector["configured"] is True
        assert collector["config"]["model"] == "owner/models/classifier"

    assert state["lag"]["total"] == 0
    assert len(state["lag"]["partitions"]) == 24
    assert len(state["workers"]) == 1
    (member,) = state["lag"]["members"]
    assert member["worker"] == state["workers"][0]["id"]
    assert member["assignment"][deployment.settings.input_topic] == list(range(8))

    # The bucket still filling is left out, so wait until the events' bucket ends.
    throughput = state["throughput"]
    assert len(throughput["starts"]) == 90
    deadline = time.monotonic() + 15
    while sum(throughput["series"]["events_in"]) < deployment.events_in:
        assert time.monotonic() < deadline, throughput["series"]["events_in"][-5:]
        time.sleep(1)
        throughput = httpx.get(url, timeout=30).json()["throughput"]
    assert sum(throughput["series"]["events_in"]) == deployment.events_in
    assert sum(throughput["series"]["posted"]) == deployment.total("posted")
    latency = httpx.get(url, timeout=30).json()["latency"]["window"]
    assert latency["count"] >= 1
    assert 0 < latency["p50_s"] <= latency["p99_s"]


def test_dashboard_renders_in_chromium(deployment: Deployment, tmp_path: Path) -> None:
    html = run_chromium(
        tmp_path / "profile", f"{deployment.api.base_url}/dashboard", "--dump-dom"
    )
    root = parse(html)
    (body,) = root.find_all("body")
    assert int(body.attrs["data-renders"]) >= 1, "the page script never rendered"
    assert int(body.attrs["data-scroll-width"]) <= VIEWPORT[0]
    assert "hidden" in root.by_id("banner").attrs, root.by_id("banner").text

    assert root.by_id("group-name").text == deployment.name
    for pill in ("pill-kafka", "pill-redis", "pill-workers"):
        assert root.by_id(pill).attrs["data-state"] == "ok", pill
    assert root.by_id("pill-workers").text == "1 worker"

    topics = [
        deployment.settings.input_topic,
        deployment.settings.queue_topic,
        deployment.settings.retry_topic,
    ]
    topic_rows = [
        row
        for row in root.find_all("tr")
        if "topic" in row.attrs.get("class", "").split()
    ]
    assert [row.attrs["data-topic"] for row in topic_rows] == topics
    for topic in topics:
        partitions = root.find_all("tr", data_topic=topic, **{"class": "part"})
        assert [row.attrs["data-partition"] for row in partitions] == [
            str(p) for p in range(8)
        ]
        for row in partitions:
            assert number(row.children[-1].text) == 0, (topic, row.attrs)
    assert number(root.by_id("lag-total-value").text) == 0

    for key, steps in deployment.funnels.items():
        (row,) = root.find_all("tr", data_collector=key)
        cells = {
            cell.attrs["data-step"]: number(cell.text)
            for cell in row.find_all("td")
            if "data-step" in cell.attrs
        }
        for step, count in steps.items():
            assert cells[step] == count, (key, step)
        assert "active" in row.text

    chart = root.by_id("throughput-chart")
    assert chart.tag == "svg"
    drawn = {line.attrs["data-series"] for line in chart.find_all("polyline")}
    assert drawn == set(SERIES)
    for line in chart.find_all("polyline"):
        assert len(line.attrs["points"].split()) == 90, line.attrs["data-series"]
    latency = root.by_id("kpi-latency")
    assert re.search(r"\d+ ms", latency.text), latency.text


def test_dashboard_screenshot_fits_viewport(
    deployment: Deployment, tmp_path: Path
) -> None:
    screenshot = tmp_path / "dashboard.png"
    run_chromium(
        tmp_path / "profile",
        f"{deployment.api.base_url}/dashboard",
        f"--screenshot={screenshot}",
    )
    assert screenshot.exists()
    with Image.open(screenshot) as image:
        assert image.format == "PNG"
        assert image.size == VIEWPORT
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None
    assert len(colours) >= 50, "the screenshot looks blank"
    copy_to = os.environ.get("COLLECTORS_DASHBOARD_SCREENSHOT")
    if copy_to:
        shutil.copyfile(screenshot, copy_to)
