"""The management commands `collectors collectors ...` and `collectors workflows ...`
against the running API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from api_helpers import Api, collector_json, random_sample_workflow_json
from click.testing import CliRunner, Result

from app.cli import main

pytest_plugins = ("api_fixtures",)


def run(api: Api, key: str, *arguments: str, **env: str) -> Result:
    """Invoke the command with the API's URL and `key`; None unsets a variable."""
    runner = CliRunner()
    environment: dict[str, str | None] = {
        "COLLECTORS_API_URL": api.base_url,
        "COLLECTORS_API_KEY": key or None,
        "CLARIFAI_PAT": None,
        **env,
    }
    return runner.invoke(main, list(arguments), env=environment)


def write(path: Path, document: Any) -> str:
    path.write_text(json.dumps(document))
    return str(path)


def test_collector_commands(api: Api, tmp_path: Path) -> None:
    key = api.key()
    workflow_file = write(tmp_path / "wf.json", random_sample_workflow_json("wf"))
    collector_file = write(
        tmp_path / "c.json", {"collectors": [collector_json("c1", key)]}
    )
    patch_file = write(tmp_path / "p.json", [{"id": "c1", "description": "patched"}])

    created_workflow = run(api, key, "workflows", "create", workflow_file)
    created = run(api, key, "collectors", "create", collector_file)
    listed = run(api, key, "collectors", "list", "--per-page", "10")
    patched = run(api, key, "collectors", "patch", patch_file)
    fetched = run(api, key, "collectors", "get", "c1")
    deleted = run(api, key, "collectors", "delete", "c1")
    missing = run(api, key, "collectors", "get", "c1")

    assert created_workflow.exit_code == 0, created_workflow.output
    assert created.exit_code == 0, created.output
    assert json.loads(created.stdout)["collectors"][0]["id"] == "c1"
    assert [c["id"] for c in json.loads(listed.stdout)["collectors"]] == ["c1"]
    assert patched.exit_code == 0, patched.output
    assert json.loads(fetched.stdout)["collector"]["description"] == "patched"
    assert deleted.exit_code == 0
    assert missing.exit_code == 1
    assert "Collector does not exist" in missing.stderr


def test_workflow_commands(api: Api, tmp_path: Path) -> None:
    key = api.key()
    workflow_file = write(
        tmp_path / "wf.json",
        {
            "workflows": [
                random_sample_workflow_json("w1"),
                random_sample_workflow_json("w2"),
            ]
        },
    )

    created = run(api, key, "workflows", "create", workflow_file)
    listed = run(api, key, "workflows", "list")
    fetched = run(api, key, "workflows", "get", "w2")
    deleted = run(api, key, "workflows", "delete", "w1", "w2")
    after = run(api, key, "workflows", "list")

    assert created.exit_code == 0, created.output
    assert [w["id"] for w in json.loads(listed.stdout)["workflows"]] == ["w1", "w2"]
    assert json.loads(fetched.stdout)["workflow"]["id"] == "w2"
    assert deleted.exit_code == 0, deleted.output
    assert json.loads(after.stdout)["workflows"] == []


def test_error_exit(api: Api, tmp_path: Path) -> None:
    key = api.key()
    invalid = write(tmp_path / "c.json", {"id": "bad id", "pre_queue_random_sample": 1})

    result = run(api, key, "collectors", "create", invalid)

    assert result.exit_code == 1
    assert "collectors[0].id" in result.stderr
    assert json.loads(result.stdout)["status"]["code"] == 11102


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("collectors", "delete"), "give the ids to delete, or --all"),
        (("collectors", "delete", "a", "--all"), "give the ids to delete, or --all"),
        (("workflows", "delete"), "give the ids to delete, or --all"),
    ],
)
def test_usage_errors(api: Api, arguments: tuple[str, ...], message: str) -> None:
    result = run(api, api.key(), *arguments)

    assert result.exit_code == 2
    assert message in result.output


def test_missing_key(api: Api) -> None:
    result = run(api, "", "collectors", "list")

    assert result.exit_code == 2
    assert "COLLECTORS_API_KEY" in result.output


def test_pat_with_app(api: Api) -> None:
    pat = api.key(pat=True)

    short = run(api, "", "collectors", "list", CLARIFAI_PAT=pat)
    with_app = run(api, "", "collectors", "list", "--app-id", "app1", CLARIFAI_PAT=pat)

    assert short.exit_code == 1
    assert "user_app_id" in short.stderr
    assert with_app.exit_code == 0, with_app.output


def test_unreachable_api(api: Api) -> None:
    result = run(
        api, api.key(), "collectors", "list", COLLECTORS_API_URL="http://127.0.0.1:9"
    )

    assert result.exit_code == 1
    assert "cannot reach the API" in result.stderr


def test_delete_all(api: Api, tmp_path: Path) -> None:
    key = api.key()
    collectors = [collector_json("a", key), collector_json("b", key)]
    run(api, key, "collectors", "create", write(tmp_path / "c.json", collectors))

    deleted = run(api, key, "collectors", "delete", "--all")
    listed = run(api, key, "collectors", "list")

    assert deleted.exit_code == 0, deleted.output
    assert json.loads(listed.stdout)["collectors"] == []
