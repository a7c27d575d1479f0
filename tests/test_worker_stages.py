"""COLLECTORS_WORKER_STAGES: which agents a worker runs."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agents.worker import build_worker_app
from app.settings import Settings


def _agent_names(stages: str) -> set[str]:
    settings = Settings(COLLECTORS_WORKER_STAGES=stages, COLLECTORS_GROUP="stages")
    app = build_worker_app(settings)
    return {name.rsplit(".", 1)[-1] for name in app.agents}


@pytest.mark.parametrize(
    ("stages", "expected"),
    [
        ("route,deliver", {"stages-route", "stages-deliver", "stages-retry"}),
        ("deliver, route", {"stages-route", "stages-deliver", "stages-retry"}),
        ("route", {"stages-route"}),
        ("deliver", {"stages-deliver", "stages-retry"}),
    ],
)
def test_stages_select_agents(stages: str, expected: set[str]) -> None:
    assert _agent_names(stages) == expected


@pytest.mark.parametrize("stages", ["", "route,post", " , "])
def test_invalid_stages_rejected(stages: str) -> None:
    with pytest.raises(ValidationError, match="expected a comma-separated list"):
        Settings(COLLECTORS_WORKER_STAGES=stages)
