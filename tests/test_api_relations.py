"""Concept relations: the app's knowledge graph."""

from __future__ import annotations

from typing import Any

import pytest
from api_helpers import Api, assert_error, channel_params, metadata
from clarifai_grpc.grpc.api import resources_pb2, service_pb2

pytest_plugins = ("api_fixtures",)

RELATIONS = "/v2/users/alice/apps/app1/concepts"


def relation(object_id: str, predicate: str, **fields: Any) -> dict[str, Any]:
    return {"object_concept": {"id": object_id}, "predicate": predicate, **fields}


def post(client: Any, concept_id: str, *relations: dict[str, Any]) -> Any:
    return client.post(
        f"{RELATIONS}/{concept_id}/relations",
        json={"concept_relations": list(relations)},
    )


def test_post_and_list(api: Api) -> None:
    with api.http(api.key()) as client:
        created = post(
            client,
            "kitten",
            relation("cat", "hyponym"),
            relation("ai_HLmqFqBf", "synonym", knowledge_graph_id=""),
        )
        from_subject = client.get(f"{RELATIONS}/kitten/relations")
        from_object = client.get(f"{RELATIONS}/cat/relations")
        everything = client.get(f"{RELATIONS}/relations")
        synonyms = client.get(
            f"{RELATIONS}/kitten/relations", params={"predicate": "synonym"}
        )

    assert created.status_code == 200, created.json()
    created_relations = created.json()["concept_relations"]
    assert [
        (r["subject_concept"]["id"], r["predicate"]) for r in created_relations
    ] == [
        ("kitten", "hyponym"),
        ("kitten", "synonym"),
    ]
    assert all(r["id"] for r in created_relations)
    assert {
        r["object_concept"]["id"] for r in from_subject.json()["concept_relations"]
    } == {
        "cat",
        "ai_HLmqFqBf",
    }
    (inverse,) = from_object.json()["concept_relations"]
    assert inverse["subject_concept"]["id"] == "cat"
    assert inverse["object_concept"]["id"] == "kitten"
    assert inverse["predicate"] == "hypernym"
    assert len(everything.json()["concept_relations"]) == 2
    assert [r["predicate"] for r in synonyms.json()["concept_relations"]] == ["synonym"]


def test_post_is_idempotent(api: Api) -> None:
    with api.http(api.key()) as client:
        first = post(client, "kitten", relation("cat", "hyponym"))
        second = post(client, "kitten", relation("cat", "hyponym"))
        listed = client.get(f"{RELATIONS}/relations")

    first_id = first.json()["concept_relations"][0]["id"]
    assert second.json()["concept_relations"][0]["id"] == first_id
    assert len(listed.json()["concept_relations"]) == 1


@pytest.mark.parametrize(
    ("item", "field"),
    [
        (relation("cat", "cousin"), "concept_relations[0].predicate"),
        ({"predicate": "synonym"}, "concept_relations[0].object_concept.id"),
        (relation("cat", "synonym", id="bad id!"), "concept_relations[0].id"),
    ],
)
def test_post_rejects_invalid(api: Api, item: dict[str, Any], field: str) -> None:
    with api.http(api.key()) as client:
        response = post(client, "kitten", item)
        empty = client.post(f"{RELATIONS}/kitten/relations", json={})

    assert response.status_code == 400
    assert response.json()["status"]["code"] == 11102
    assert field in response.json()["status"]["description"]
    assert "concept_relations" in empty.json()["status"]["description"]


def test_list_paging_and_filters(api: Api) -> None:
    with api.http(api.key()) as client:
        post(client, "a", *[relation(f"o{i}", "synonym") for i in range(5)])
        post(client, "a", relation("p", "hyponym", knowledge_graph_id="kg2"))
        page = client.get(f"{RELATIONS}/a/relations", params={"page": 2, "per_page": 4})
        graph = client.get(
            f"{RELATIONS}/relations", params={"knowledge_graph_id": "kg2"}
        )
        bad = client.get(f"{RELATIONS}/relations", params={"predicate": "cousin"})

    assert len(page.json()["concept_relations"]) == 2
    assert [r["object_concept"]["id"] for r in graph.json()["concept_relations"]] == [
        "p"
    ]
    assert bad.status_code == 400


def test_delete(api: Api) -> None:
    with api.http(api.key()) as client:
        created_relations = post(
            client, "kitten", relation("cat", "hyponym"), relation("pet", "hyponym")
        ).json()["concept_relations"]
        first, second = (r["id"] for r in created_relations)
        wrong_concept = client.request(
            "DELETE", f"{RELATIONS}/dog/relations", json={"ids": [first]}
        )
        unknown = client.request(
            "DELETE", f"{RELATIONS}/kitten/relations", json={"ids": [first, "ghost"]}
        )
        from_object = client.request(
            "DELETE", f"{RELATIONS}/cat/relations", json={"ids": [first]}
        )
        no_ids = client.request("DELETE", f"{RELATIONS}/kitten/relations", json={})
        listed = client.get(f"{RELATIONS}/relations")

    assert wrong_concept.status_code == 404
    assert wrong_concept.json()["status"]["code"] == 11101
    assert unknown.status_code == 404
    assert "ghost" in unknown.json()["status"]["description"]
    assert from_object.status_code == 200
    assert no_ids.status_code == 400
    assert [r["id"] for r in listed.json()["concept_relations"]] == [second]


def test_scopes(api: Api) -> None:
    with api.http(api.key(scopes=("Concepts:Get",))) as client:
        denied = post(client, "kitten", relation("cat", "hyponym"))
        allowed = client.get(f"{RELATIONS}/relations")

    assert denied.status_code == 403
    assert "Concepts:Add" in denied.json()["status"]["description"]
    assert allowed.status_code == 200


@pytest.mark.parametrize("channel", channel_params(broken_json=True))
def test_channels(api: Api, channel: str) -> None:
    key = api.key()
    stub = api.stub(channel)

    created = stub.PostConceptRelations(
        service_pb2.PostConceptRelationsRequest(
            user_app_id=resources_pb2.UserAppIDSet(user_id="alice", app_id="app1"),
            concept_id="kitten",
            concept_relations=[
                resources_pb2.ConceptRelation(
                    object_concept=resources_pb2.Concept(id="cat"), predicate="hyponym"
                )
            ],
        ),
        metadata=metadata(key),
    )
    listed = stub.ListConceptRelations(
        service_pb2.ListConceptRelationsRequest(
            user_app_id=resources_pb2.UserAppIDSet(user_id="alice", app_id="app1"),
            concept_id="cat",
        ),
        metadata=metadata(key),
    )
    deleted = stub.DeleteConceptRelations(
        service_pb2.DeleteConceptRelationsRequest(
            user_app_id=resources_pb2.UserAppIDSet(user_id="alice", app_id="app1"),
            concept_id="kitten",
            ids=[created.concept_relations[0].id],
        ),
        metadata=metadata(key),
    )

    assert created.status.code == 10000, created.status
    assert [r.predicate for r in listed.concept_relations] == ["hypernym"]
    assert deleted.status.code == 10000


@pytest.mark.parametrize("channel", ["grpc", "json"])
def test_list_channels(api: Api, channel: str) -> None:
    key = api.key()
    with api.http(key) as client:
        post(client, "kitten", relation("cat", "hyponym"))

    listed = api.stub(channel).ListConceptRelations(
        service_pb2.ListConceptRelationsRequest(
            user_app_id=resources_pb2.UserAppIDSet(user_id="alice", app_id="app1"),
            concept_id="kitten",
            predicate="hyponym",
        ),
        metadata=metadata(key),
    )
    missing_app = api.grpc_stub().ListConceptRelations(
        service_pb2.ListConceptRelationsRequest(concept_id="kitten"),
        metadata=metadata(key),
    )

    assert [r.object_concept.id for r in listed.concept_relations] == ["cat"]
    assert missing_app.status.code == 10000
    assert_error(
        api.grpc_stub()
        .ListConceptRelations(
            service_pb2.ListConceptRelationsRequest(
                user_app_id=resources_pb2.UserAppIDSet(app_id="other")
            ),
            metadata=metadata(key),
        )
        .status,
        11008,
    )
