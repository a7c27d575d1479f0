"""Pydantic models that describe the REST API in /openapi.json.

They document Clarifai's JSON shapes for the fields this service uses. Requests are
checked against the protobuf request messages (app/api/protojson.py), not against
these models, so the two must list the same fields. The exceptions are this
service's own: a collector's `metadata` object, and the requests of the preview and
revision routes, which their handlers check.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StatusSchema(_Schema):
    code: int = Field(10000, description="Clarifai status code; 10000 is SUCCESS.")
    description: str = ""
    details: str = ""
    req_id: str = Field("", description="Unique id of the request, for support.")
    http_status_code: int = 0


class UserAppIdSchema(_Schema):
    user_id: str = Field("", description="`me` means the key's own user.")
    app_id: str = ""


class ConceptSchema(_Schema):
    id: str = ""
    name: str = ""
    value: float = Field(1.0, description="1 for present (the default), 0 for absent.")
    app_id: str = ""
    user_id: str = ""


class ImageSchema(_Schema):
    url: str = ""
    base64: str = Field("", description="Image bytes as base64 text.")
    allow_duplicate_url: bool = False


class TextSchema(_Schema):
    raw: str = ""
    url: str = ""
    allow_duplicate_url: bool = False


class DataSchema(_Schema):
    image: ImageSchema | None = None
    text: TextSchema | None = None
    concepts: list[ConceptSchema] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)


class InputSchema(_Schema):
    id: str = Field("", description="Generated when empty.")
    data: DataSchema | None = None
    created_at: str | None = Field(None, description="RFC 3339, set by the server.")
    status: StatusSchema | None = None


class ModelOutputsSourceSchema(_Schema):
    model_user_id: str = Field("", description="`clarifai` for public models.")
    model_app_id: str = Field("", description="`main` for public models.")
    model_id: str = ""
    model_version_id: str = ""
    post_inputs_key_id: str = Field(
        "", description="Key with Inputs:Add for this app, used to post inputs."
    )
    caller_user_id: str = Field(
        "",
        description="User whose predict calls are collected; empty means every"
        " caller, which only the model's owner may choose.",
    )


class CollectorSourceSchema(_Schema):
    api_post_model_outputs_collector_source: ModelOutputsSourceSchema | None = None


class CollectorOptionsSchema(_Schema):
    """Options of this service that Clarifai's Collector has no fields for."""

    sample_key: str = Field(
        "",
        max_length=256,
        description="Dotted path into the input's metadata, such as camera.id."
        " pre_queue_random_sample then keeps or drops all inputs with the same"
        " value together. Needs pre_queue_random_sample; empty means unset.",
    )
    collect_failed_predictions: bool = Field(
        False,
        description="Also collect inputs whose prediction failed (output status"
        " not 10000); only the random sample applies to them.",
    )


class CollectorSchema(_Schema):
    id: str = ""
    description: str = ""
    created_at: str | None = None
    pre_queue_workflow_id: str = ""
    pre_queue_random_sample: float = Field(
        0.0, description="Fraction in (0, 1] of predictions to collect; 0 is unset."
    )
    post_queue_workflow_id: str = ""
    collector_source: CollectorSourceSchema | None = None
    status: StatusSchema | None = Field(
        None, description="52001 COLLECTOR_ACTIVE or 52002 COLLECTOR_INACTIVE."
    )
    collect_outputs: bool = False
    metadata: CollectorOptionsSchema | None = Field(
        None,
        description="This service's own options; Clarifai's clients ignore them."
        " In PatchCollectors a given object replaces all the options.",
    )


class ModelVersionSchema(_Schema):
    id: str = ""


class OutputInfoSchema(_Schema):
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Operator parameters; base_url and api_key for remote models.",
    )
    data: DataSchema | None = None


class ModelSchema(_Schema):
    id: str = ""
    name: str = ""
    user_id: str = ""
    app_id: str = ""
    model_type_id: str = Field(
        "", description="Operator type, for example random-sample."
    )
    model_version: ModelVersionSchema | None = None
    output_info: OutputInfoSchema | None = None


class NodeInputSchema(_Schema):
    node_id: str = ""


class WorkflowNodeSchema(_Schema):
    id: str = ""
    model: ModelSchema | None = None
    node_inputs: list[NodeInputSchema] = Field(default_factory=list)
    suppress_output: bool = False


class WorkflowSchema(_Schema):
    id: str = ""
    user_id: str = ""
    app_id: str = ""
    description: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)
    nodes: list[WorkflowNodeSchema] = Field(default_factory=list)
    created_at: str | None = None
    modified_at: str | None = None


class OutputSchema(_Schema):
    id: str = ""
    status: StatusSchema | None = None
    created_at: str | None = None
    model: ModelSchema | None = None
    input: InputSchema | None = None
    data: DataSchema | None = None


class WorkflowResultSchema(_Schema):
    id: str = ""
    status: StatusSchema | None = None
    created_at: str | None = None
    input: InputSchema | None = None
    outputs: list[OutputSchema] = Field(default_factory=list)


class ConceptRelationSchema(_Schema):
    id: str = ""
    subject_concept: ConceptSchema | None = None
    object_concept: ConceptSchema | None = None
    predicate: str = Field("", description="synonym, hyponym or hypernym.")
    knowledge_graph_id: str = ""


class AppSchema(_Schema):
    id: str = ""
    user_id: str = ""


# --- requests ---------------------------------------------------------------------


class _Request(_Schema):
    user_app_id: UserAppIdSchema | None = Field(
        None, description="Ignored on /v2/users/{user_id}/apps/{app_id}/... paths."
    )


class PostCollectorsRequest(_Request):
    collectors: list[CollectorSchema] = Field(default_factory=list)


class PatchCollectorsRequest(_Request):
    collectors: list[CollectorSchema] = Field(default_factory=list)
    action: str = Field("", description="`overwrite` or empty (the same).")


class DeleteCollectorsRequest(_Request):
    ids: list[str] = Field(default_factory=list)
    delete_all: bool = False


class PostInputsRequest(_Request):
    inputs: list[InputSchema] = Field(default_factory=list)


class DeleteInputsRequest(_Request):
    ids: list[str] = Field(default_factory=list)
    delete_all: bool = False


class PostWorkflowsRequest(_Request):
    workflows: list[WorkflowSchema] = Field(default_factory=list)


class PatchWorkflowsRequest(_Request):
    workflows: list[WorkflowSchema] = Field(default_factory=list)
    action: str = ""


class DeleteWorkflowsRequest(_Request):
    ids: list[str] = Field(default_factory=list)
    delete_all: bool = False


class PostWorkflowResultsRequest(_Request):
    inputs: list[InputSchema] = Field(default_factory=list)


class PostConceptRelationsRequest(_Request):
    concept_relations: list[ConceptRelationSchema] = Field(default_factory=list)


class DeleteConceptRelationsRequest(_Request):
    ids: list[str] = Field(default_factory=list)


class PreviewCollectorRequest(_Request):
    last_n: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="Replay the newest N events of the input topic (default 1000)."
        " Not with start_time.",
    )
    start_time: datetime | None = Field(
        None, description="RFC 3339; replay the events from this time on."
    )
    end_time: datetime | None = Field(
        None,
        description="RFC 3339, after start_time; replay the events before this"
        " time. Default: up to the newest event.",
    )
    examples: int | None = Field(
        None, ge=0, le=50, description="How many inputs to show (default 5)."
    )


class EmptyRequest(_Request):
    pass


# --- responses --------------------------------------------------------------------


class BaseResponse(_Schema):
    status: StatusSchema


class MultiCollectorResponse(BaseResponse):
    collectors: list[CollectorSchema] = Field(default_factory=list)


class SingleCollectorResponse(BaseResponse):
    collector: CollectorSchema | None = None


class MultiInputResponse(BaseResponse):
    inputs: list[InputSchema] = Field(default_factory=list)


class SingleInputResponse(BaseResponse):
    input: InputSchema | None = None


class MultiWorkflowResponse(BaseResponse):
    workflows: list[WorkflowSchema] = Field(default_factory=list)


class SingleWorkflowResponse(BaseResponse):
    workflow: WorkflowSchema | None = None


class PostWorkflowResultsResponse(BaseResponse):
    workflow: WorkflowSchema | None = None
    results: list[WorkflowResultSchema] = Field(default_factory=list)


class MultiConceptRelationResponse(BaseResponse):
    concept_relations: list[ConceptRelationSchema] = Field(default_factory=list)


class PreviewExampleSchema(_Schema):
    id: str = Field("", description="The input's id at the destination.")
    event_id: str = ""
    input: dict[str, Any] = Field(
        default_factory=dict, description="The input as the event carries it."
    )


class PreviewSchema(_Schema):
    events: int = Field(0, description="Events read from the input topic.")
    outputs: int = Field(0, description="Outputs in those events.")
    invalid: int = Field(
        0, description="Events and outputs the worker would dead-letter."
    )
    matched: int = Field(0, description="Outputs of the collector's model.")
    dropped_random_sample: int = 0
    dropped_pre_queue: int = 0
    enqueued: int = 0
    dropped_post_queue: int = 0
    model_failed: int = Field(0, description="Inputs whose remote model call failed.")
    would_post: int = 0
    quota_and_dedupe_not_applied: list[str] = Field(
        default_factory=list,
        description="Ids of quota and dedupe nodes, which a preview does not apply.",
    )
    examples: list[PreviewExampleSchema] = Field(default_factory=list)
    broken_reason: str = Field(
        "",
        description="Set when the collector names a workflow that does not exist"
        " or does not compile; such a collector collects nothing.",
    )


class PreviewCollectorResponse(BaseResponse):
    preview: PreviewSchema | None = None


class RevisionChangeSchema(_Schema):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_value: Any = Field(None, alias="from")
    to_value: Any = Field(None, alias="to")


class RevisionSchema(_Schema):
    action: Literal["create", "update", "delete"] = "update"
    actor: str = Field(
        "",
        description="Who made the change: the user, the kind of key and the start"
        " of the key's SHA-256 digest.",
    )
    created_at: str = Field("", description="When the change was made, RFC 3339.")
    changes: dict[str, RevisionChangeSchema] = Field(
        default_factory=dict,
        description="Changed fields by API path, such as status.code. A"
        " post-inputs key shows only as (hidden) and (changed).",
    )


class ListCollectorRevisionsResponse(BaseResponse):
    revisions: list[RevisionSchema] = Field(
        default_factory=list, description="Newest first."
    )


class MultiScopeResponse(BaseResponse):
    scopes: list[str] = Field(default_factory=list)
    app: AppSchema | None = None
    endpoints: list[str] = Field(default_factory=list)


REQUEST_SCHEMAS: dict[str, type[BaseModel]] = {
    "PostCollectors": PostCollectorsRequest,
    "PatchCollectors": PatchCollectorsRequest,
    "DeleteCollectors": DeleteCollectorsRequest,
    "PostInputs": PostInputsRequest,
    "DeleteInputs": DeleteInputsRequest,
    "DeleteInput": EmptyRequest,
    "PostWorkflows": PostWorkflowsRequest,
    "PatchWorkflows": PatchWorkflowsRequest,
    "DeleteWorkflows": DeleteWorkflowsRequest,
    "DeleteWorkflow": EmptyRequest,
    "PostWorkflowResults": PostWorkflowResultsRequest,
    "PostConceptRelations": PostConceptRelationsRequest,
    "DeleteConceptRelations": DeleteConceptRelationsRequest,
    "PreviewCollector": PreviewCollectorRequest,
}

RESPONSE_SCHEMAS: dict[str, type[BaseModel]] = {
    "PostCollectors": MultiCollectorResponse,
    "GetCollector": SingleCollectorResponse,
    "ListCollectors": MultiCollectorResponse,
    "PatchCollectors": MultiCollectorResponse,
    "DeleteCollectors": BaseResponse,
    "PostInputs": MultiInputResponse,
    "ListInputs": MultiInputResponse,
    "GetInput": SingleInputResponse,
    "DeleteInputs": BaseResponse,
    "DeleteInput": BaseResponse,
    "PostWorkflows": MultiWorkflowResponse,
    "GetWorkflow": SingleWorkflowResponse,
    "ListWorkflows": MultiWorkflowResponse,
    "PatchWorkflows": MultiWorkflowResponse,
    "DeleteWorkflows": BaseResponse,
    "DeleteWorkflow": BaseResponse,
    "PostWorkflowResults": PostWorkflowResultsResponse,
    "PostConceptRelations": MultiConceptRelationResponse,
    "ListConceptRelations": MultiConceptRelationResponse,
    "DeleteConceptRelations": BaseResponse,
    "MyScopes": MultiScopeResponse,
    "PreviewCollector": PreviewCollectorResponse,
    "ListCollectorRevisions": ListCollectorRevisionsResponse,
}
