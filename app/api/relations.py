"""Concept relations (the app's knowledge graph) and MyScopes.

A relation links a subject concept to an object concept with the predicate
`synonym` (symmetric), `hyponym` (the subject is a kind of the object) or `hypernym`
(the inverse). Listing a concept's relations also shows the relations where it is
the object, turned around, so adding one direction makes the inverse visible.
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import ValidationError

from app.api.context import RpcContext, check_id, parse_paging
from app.api.errors import CONN_DOES_NOT_EXIST, ApiError, invalid_request
from app.models import ConceptRelation, describe_validation_error

PREDICATES = ("synonym", "hyponym", "hypernym")
INVERSE_PREDICATE = {"synonym": "synonym", "hyponym": "hypernym", "hypernym": "hyponym"}
MAX_CONCEPT_ID_CHARS = 256
MAX_RELATIONS_PER_REQUEST = 128


def _check_concept_id(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise invalid_request(f"{path}: missing concept id")
    if len(value) > MAX_CONCEPT_ID_CHARS or not value.isprintable():
        raise invalid_request(
            f"{path}: invalid concept id; use at most {MAX_CONCEPT_ID_CHARS}"
            " printable characters"
        )
    return value


def _identity(relation: ConceptRelation) -> tuple[str, str, str, str, str]:
    return (
        relation.subject_concept.id,
        relation.object_concept.id,
        relation.object_concept.app_id,
        relation.predicate,
        relation.knowledge_graph_id,
    )


async def post_concept_relations(
    ctx: RpcContext, request: dict[str, Any]
) -> dict[str, Any]:
    """Add relations from the path's concept; a relation that exists already is
    returned as it is and not added twice."""
    concept_id = _check_concept_id(request.get("concept_id"), "concept_id")
    items = request.get("concept_relations") or []
    if not 1 <= len(items) <= MAX_RELATIONS_PER_REQUEST:
        raise invalid_request(
            f"concept_relations: expected 1 to {MAX_RELATIONS_PER_REQUEST} relations,"
            f" got {len(items)}"
        )
    existing = {
        _identity(relation): relation
        for relation in await ctx.store.list_relations(ctx.user_id, ctx.app_id)
    }

    results: list[ConceptRelation] = []
    new: list[ConceptRelation] = []
    for index, item in enumerate(items):
        relation = _build_relation(concept_id, item, f"concept_relations[{index}]")
        known = existing.get(_identity(relation))
        if known is None:
            existing[_identity(relation)] = relation
            new.append(relation)
            known = relation
        results.append(known)
    if new:
        await ctx.store.put_relations(ctx.user_id, ctx.app_id, new)
    return {"concept_relations": [relation.model_dump() for relation in results]}


def _build_relation(
    concept_id: str, item: dict[str, Any], path: str
) -> ConceptRelation:
    predicate = item.get("predicate")
    if predicate not in PREDICATES:
        raise invalid_request(
            f"{path}.predicate: expected one of {', '.join(PREDICATES)},"
            f" got {predicate!r}"
        )
    object_concept = dict(item.get("object_concept") or {})
    _check_concept_id(object_concept.get("id"), f"{path}.object_concept.id")
    subject_concept = {**(item.get("subject_concept") or {}), "id": concept_id}
    relation_id = item.get("id") or uuid.uuid4().hex
    check_id(relation_id, f"{path}.id")
    try:
        return ConceptRelation.model_validate(
            {
                "id": relation_id,
                "subject_concept": subject_concept,
                "object_concept": object_concept,
                "predicate": predicate,
                "knowledge_graph_id": item.get("knowledge_graph_id") or "",
            }
        )
    except ValidationError as error:
        raise invalid_request(describe_validation_error(error, path)) from error


def _as_seen_from(relation: ConceptRelation, concept_id: str) -> ConceptRelation | None:
    if relation.subject_concept.id == concept_id:
        return relation
    if relation.object_concept.id == concept_id:
        return relation.model_copy(
            update={
                "subject_concept": relation.object_concept,
                "object_concept": relation.subject_concept,
                "predicate": INVERSE_PREDICATE[relation.predicate],
            }
        )
    return None


async def list_concept_relations(
    ctx: RpcContext, request: dict[str, Any]
) -> dict[str, Any]:
    page, per_page = parse_paging(request)
    predicate = request.get("predicate") or ""
    if predicate and predicate not in PREDICATES:
        raise invalid_request(
            f"predicate: expected one of {', '.join(PREDICATES)}, got {predicate!r}"
        )
    knowledge_graph_id = request.get("knowledge_graph_id") or ""
    concept_id = request.get("concept_id") or ""

    relations: list[ConceptRelation] = []
    for relation in await ctx.store.list_relations(ctx.user_id, ctx.app_id):
        seen = _as_seen_from(relation, concept_id) if concept_id else relation
        if seen is None:
            continue
        if predicate and seen.predicate != predicate:
            continue
        if knowledge_graph_id and seen.knowledge_graph_id != knowledge_graph_id:
            continue
        relations.append(seen)
    start = (page - 1) * per_page
    return {
        "concept_relations": [
            relation.model_dump() for relation in relations[start : start + per_page]
        ]
    }


async def delete_concept_relations(
    ctx: RpcContext, request: dict[str, Any]
) -> dict[str, Any]:
    """Delete relations of the path's concept by id; nothing is deleted when an id
    is not a relation of that concept."""
    concept_id = _check_concept_id(request.get("concept_id"), "concept_id")
    ids = request.get("ids") or []
    if not ids:
        raise invalid_request("ids: list the relation ids to delete")
    by_id = {
        relation.id: relation
        for relation in await ctx.store.list_relations(ctx.user_id, ctx.app_id)
    }
    missing = [
        relation_id
        for relation_id in ids
        if relation_id not in by_id
        or _as_seen_from(by_id[relation_id], concept_id) is None
    ]
    if missing:
        raise ApiError(
            CONN_DOES_NOT_EXIST,
            f"relations of concept {concept_id!r} not found: {', '.join(missing)}",
        )
    await ctx.store.delete_relations(ctx.user_id, ctx.app_id, ids)
    return {}
