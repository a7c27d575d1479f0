"""Clarifai's Collectors guide, run with Clarifai's Node.js and Java clients against
this service.

tests/clients/node/guide.js and tests/clients/java/src/main/java/CollectorsGuide.java
contain the guide's examples for those languages. Each test runs some of them and
then checks their effect through the Python gRPC client. `make install` runs the
`npm ci` and the Maven download these tests need, so they fail, rather than skip, when
a runtime or the installed packages are missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from api_helpers import Api, metadata, post_workflows, random_sample_workflow_pb
from clarifai_grpc.grpc.api import service_pb2
from clarifai_grpc.grpc.api.status import status_code_pb2

pytest_plugins = ("api_fixtures",)

CLIENTS = Path(__file__).resolve().parent / "clients"
NODE_CLIENT = CLIENTS / "node"
JAVA_CLIENT = CLIENTS / "java"
CLIENT_TIMEOUT_S = 60
MODEL_VERSION_ID = "aa7f35c01e0642fda5cf400f543e7c40"


@dataclass(frozen=True)
class GuideClient:
    """A command that runs the guide's examples named after it."""

    command: tuple[str, ...]
    cwd: Path
    # How the client prints a string field of a collector: Node's console.log writes
    # `name: 'value'`, protobuf-java's text format `name: "value"`.
    quote: str
    # How the client reports a COLLECTOR_MISSING status.
    missing_code: str

    def field(self, name: str, value: str) -> str:
        return f"{name}: {self.quote}{value}{self.quote}"


def _require_executable(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not on PATH: {hint}")
    return path


@pytest.fixture(scope="module")
def node_client() -> GuideClient:
    node = _require_executable(
        "node", "install Node.js 18 or newer, then run `make install`"
    )
    package = NODE_CLIENT / "node_modules" / "clarifai-nodejs-grpc"
    if not package.is_dir():
        pytest.fail(f"{package} is missing: run `make install` (it runs npm ci there)")
    return GuideClient(
        command=(node, "guide.js"),
        cwd=NODE_CLIENT,
        quote="'",
        missing_code="code: 52000",
    )


@pytest.fixture(scope="module")
def java_client(tmp_path_factory: pytest.TempPathFactory) -> GuideClient:
    hint = "install a JDK 11 or newer (Debian: default-jdk-headless)"
    java = _require_executable("java", hint)
    javac = _require_executable("javac", hint)
    dependencies = JAVA_CLIENT / "target" / "dependency"
    if not list(dependencies.glob("clarifai-grpc-*.jar")):
        pytest.fail(
            f"{dependencies} has no clarifai-grpc jar: run `make install` "
            "(it runs mvn dependency:copy-dependencies there)"
        )
    classes = tmp_path_factory.mktemp("java-guide-classes")
    class_path = f"{dependencies}/*"
    subprocess.run(
        [
            javac,
            "-d",
            str(classes),
            "-cp",
            class_path,
            str(JAVA_CLIENT / "src" / "main" / "java" / "CollectorsGuide.java"),
        ],
        check=True,
        timeout=CLIENT_TIMEOUT_S,
    )
    return GuideClient(
        command=(java, "-cp", f"{classes}{os.pathsep}{class_path}", "CollectorsGuide"),
        cwd=JAVA_CLIENT,
        quote='"',
        missing_code="code: COLLECTOR_MISSING",
    )


@pytest.fixture(params=["node", "java"])
def client(request: pytest.FixtureRequest) -> GuideClient:
    fixture: GuideClient = request.getfixturevalue(f"{request.param}_client")
    return fixture


def _run_guide(
    client: GuideClient, api: Api, key: str, *examples: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run the named examples (all five when none are named)."""
    environment = {
        **os.environ,
        "COLLECTORS_GRPC_PORT": str(api.running.grpc_port),
        "COLLECTORS_API_KEY": key,
    }
    command = [*client.command, *examples]
    completed = subprocess.run(
        command,
        cwd=client.cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT_S,
    )
    if check:
        assert completed.returncode == 0, (
            f"{' '.join(command)} exited with {completed.returncode}\n"
            f"stdout:\n{completed.stdout}\nstderr:\n{completed.stderr}"
        )
    return completed


def _get(api: Api, key: str, collector_id: str) -> service_pb2.SingleCollectorResponse:
    return api.grpc_stub().GetCollector(
        service_pb2.GetCollectorRequest(collector_id=collector_id),
        metadata=metadata(key),
    )


def _post_guide_workflows(api: Api, key: str) -> None:
    response = post_workflows(
        api.grpc_stub(),
        metadata(key),
        random_sample_workflow_pb("pre-queue"),
        random_sample_workflow_pb("post-queue"),
        random_sample_workflow_pb("new-workflow"),
    )
    assert response.status.code == status_code_pb2.SUCCESS, response.status


def test_guide_client_examples(client: GuideClient, api: Api) -> None:
    key = api.key()
    _post_guide_workflows(api, key)

    _run_guide(client, api, key, "add")
    added = _get(api, key, "my-collector")
    assert added.status.code == status_code_pb2.SUCCESS, added.status
    assert added.collector.description == "Collects from the general model"
    assert added.collector.pre_queue_workflow_id == "pre-queue"
    assert added.collector.post_queue_workflow_id == "post-queue"
    source = added.collector.collector_source.api_post_model_outputs_collector_source
    assert source.model_user_id == "clarifai"
    assert source.model_app_id == "main"
    assert source.model_id == "general-image-recognition"
    assert source.model_version_id == MODEL_VERSION_ID
    assert source.post_inputs_key_id == key

    # The list and get examples each print the collector once.
    completed = _run_guide(client, api, key, "update", "list", "get")
    updated = _get(api, key, "my-collector")
    assert updated.status.code == status_code_pb2.SUCCESS, updated.status
    assert updated.collector.description == "A new description"
    assert updated.collector.pre_queue_workflow_id == "new-workflow"
    assert updated.collector.post_queue_workflow_id == "post-queue"
    source = updated.collector.collector_source.api_post_model_outputs_collector_source
    assert source.model_version_id == MODEL_VERSION_ID
    output = completed.stdout
    assert output.count(client.field("id", "my-collector")) == 2, output
    assert output.count(client.field("description", "A new description")) == 2
    assert output.count(client.field("pre_queue_workflow_id", "new-workflow")) == 2

    _run_guide(client, api, key, "delete")
    deleted = _get(api, key, "my-collector")
    assert deleted.status.code == status_code_pb2.COLLECTOR_MISSING, deleted.status


def test_guide_client_all_in_order(client: GuideClient, api: Api) -> None:
    key = api.key()
    _post_guide_workflows(api, key)

    completed = _run_guide(client, api, key)

    assert "ran add, update, list, get, delete" in completed.stdout
    assert client.field("description", "A new description") in completed.stdout
    remaining = api.grpc_stub().ListCollectors(
        service_pb2.ListCollectorsRequest(), metadata=metadata(key)
    )
    assert remaining.status.code == status_code_pb2.SUCCESS, remaining.status
    assert list(remaining.collectors) == []


def test_guide_client_failed_status_exits(client: GuideClient, api: Api) -> None:
    key = api.key()

    completed = _run_guide(client, api, key, "get", check=False)

    assert completed.returncode == 1, completed
    expected = 'example "get" failed: Get collector failed, status: '
    assert expected in completed.stderr
    assert "my-collector" in completed.stderr
    assert client.missing_code in completed.stdout + completed.stderr
