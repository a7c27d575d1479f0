"""Clarifai's Collectors guide, run against this service.

The Python examples are copied as the guide writes them, with the ids filled in and
the channel pointed at the in-process server. The cURL examples run through curl.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import pytest
from api_helpers import (
    CHANNELS,
    Api,
    metadata,
    post_workflows,
    random_sample_workflow_pb,
)
from clarifai_grpc.channel.clarifai_channel import ClarifaiChannel
from clarifai_grpc.grpc.api import resources_pb2, service_pb2, service_pb2_grpc
from clarifai_grpc.grpc.api.status import status_code_pb2

pytest_plugins = ("api_fixtures",)

MODEL_VERSION_ID = "aa7f35c01e0642fda5cf400f543e7c40"


def _stub(api: Api, channel_kind: str) -> Any:
    # The guide's initialization with only the address changed.
    if channel_kind == "grpc":
        channel = ClarifaiChannel.get_insecure_grpc_channel(
            base="127.0.0.1", port=api.running.grpc_port
        )
    else:
        channel = ClarifaiChannel.get_json_channel(base_url=api.base_url)
    return service_pb2_grpc.V2Stub(channel)


@pytest.mark.parametrize("channel_kind", CHANNELS)
def test_guide_python_examples(api: Api, channel_kind: str) -> None:
    key = api.key()
    stub = _stub(api, channel_kind)
    metadata = (("authorization", "Key " + key),)
    post_workflows(
        stub,
        metadata,
        random_sample_workflow_pb("pre-queue"),
        random_sample_workflow_pb("post-queue"),
        random_sample_workflow_pb("new-workflow"),
    )

    # Add Collector
    post_collectors_response = stub.PostCollectors(
        service_pb2.PostCollectorsRequest(
            collectors=[
                resources_pb2.Collector(
                    id="my-collector",
                    description="Collects from the general model",
                    pre_queue_workflow_id="pre-queue",
                    post_queue_workflow_id="post-queue",
                    collector_source=resources_pb2.CollectorSource(
                        api_post_model_outputs_collector_source=resources_pb2.APIPostModelOutputsCollectorSource(
                            model_user_id="clarifai",
                            model_app_id="main",
                            model_id="general-image-recognition",
                            model_version_id=MODEL_VERSION_ID,
                            post_inputs_key_id=key,
                        )
                    ),
                )
            ]
        ),
        metadata=metadata,
    )
    if post_collectors_response.status.code != status_code_pb2.SUCCESS:
        raise Exception(
            "Post collectors failed, status: "
            + post_collectors_response.status.description
        )

    # Update Collector
    patch_collectors_response = stub.PatchCollectors(
        service_pb2.PatchCollectorsRequest(
            collectors=[
                resources_pb2.Collector(
                    id="my-collector",
                    description="A new description",
                    pre_queue_workflow_id="new-workflow",
                )
            ]
        ),
        metadata=metadata,
    )
    if patch_collectors_response.status.code != status_code_pb2.SUCCESS:
        raise Exception(
            "Patch collectors failed, status: "
            + patch_collectors_response.status.description
        )

    # List Collectors
    list_collectors_response = stub.ListCollectors(
        service_pb2.ListCollectorsRequest(), metadata=metadata
    )
    if list_collectors_response.status.code != status_code_pb2.SUCCESS:
        raise Exception(
            "List collectors failed, status: "
            + list_collectors_response.status.description
        )
    for collector in list_collectors_response.collectors:
        print(collector)

    # Get Collector
    get_collector_response = stub.GetCollector(
        service_pb2.GetCollectorRequest(collector_id="my-collector"),
        metadata=metadata,
    )
    if get_collector_response.status.code != status_code_pb2.SUCCESS:
        raise Exception(
            "Get collector failed, status: " + get_collector_response.status.description
        )
    print(get_collector_response.collector)

    # Delete Collector
    delete_collectors_response = stub.DeleteCollectors(
        service_pb2.DeleteCollectorsRequest(ids=["my-collector"]), metadata=metadata
    )
    if delete_collectors_response.status.code != status_code_pb2.SUCCESS:
        raise Exception(
            "Delete collectors failed, status: "
            + delete_collectors_response.status.description
        )

    collector = get_collector_response.collector
    assert [c.id for c in list_collectors_response.collectors] == ["my-collector"]
    assert collector.description == "A new description"
    assert collector.pre_queue_workflow_id == "new-workflow"
    assert collector.post_queue_workflow_id == "post-queue"
    source = collector.collector_source.api_post_model_outputs_collector_source
    assert source.model_version_id == MODEL_VERSION_ID
    assert source.post_inputs_key_id == key


def _curl(*arguments: str) -> dict[str, Any]:
    completed = subprocess.run(
        ["curl", "--silent", "--show-error", *arguments],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    result: dict[str, Any] = json.loads(completed.stdout)
    return result


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_guide_curl_examples(api: Api) -> None:
    key = api.key()
    post_workflows(
        api.grpc_stub(),
        metadata(key),
        random_sample_workflow_pb("pre-queue"),
        random_sample_workflow_pb("post-queue"),
        random_sample_workflow_pb("new-workflow"),
    )
    base = api.base_url
    headers = [
        "-H",
        f"Authorization: Key {key}",
        "-H",
        "Content-Type: application/json",
    ]

    added = _curl(
        "-X",
        "POST",
        f"{base}/v2/collectors",
        *headers,
        "--data-raw",
        """{
"collectors": [
{
"id": "my-collector",
"description": "Collects from the general model",
"pre_queue_workflow_id": "pre-queue",
"post_queue_workflow_id": "post-queue",
"collector_source": {
"api_post_model_outputs_collector_source": {
"model_user_id": "clarifai",
"model_app_id": "main",
"model_id": "general-image-recognition",
"model_version_id": "aa7f35c01e0642fda5cf400f543e7c40",
"post_inputs_key_id": "YOUR_API_KEY"
}
}
}
]
}""".replace("YOUR_API_KEY", key),
    )
    updated = _curl(
        "-X",
        "PATCH",
        f"{base}/v2/collectors",
        *headers,
        "--data-raw",
        """{
"action": "overwrite",
"collectors": [
{
"id": "my-collector",
"description": "A new description",
"pre_queue_workflow_id": "new-workflow"
}
]
}""",
    )
    listed = _curl("-X", "GET", f"{base}/v2/collectors", *headers)
    fetched = _curl("-X", "GET", f"{base}/v2/collectors/my-collector", *headers)
    deleted = _curl(
        "-X",
        "DELETE",
        f"{base}/v2/collectors",
        *headers,
        "--data-raw",
        """{
"ids": ["my-collector"]
}""",
    )

    assert added["status"]["code"] == 10000, added
    assert updated["status"]["code"] == 10000, updated
    assert [c["id"] for c in listed["collectors"]] == ["my-collector"]
    assert fetched["collector"]["pre_queue_workflow_id"] == "new-workflow"
    assert fetched["collector"]["description"] == "A new description"
    assert deleted["status"]["code"] == 10000
