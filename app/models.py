"""Pydantic models: collectors, workflows, API keys and prediction events.

JSON field names are Clarifai's proto field names (snake_case), so a collector read
from Redis, sent over REST or converted to a protobuf message has one shape.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

SUCCESS = 10000
COLLECTOR_ACTIVE = 52001
COLLECTOR_INACTIVE = 52002
COLLECTOR_STATUS_DESCRIPTIONS = {
    COLLECTOR_ACTIVE: "Collector is active",
    COLLECTOR_INACTIVE: "Collector is inactive",
}

ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,48}$")
MAX_OUTPUTS_PER_EVENT = 128

ResourceId = Annotated[str, StringConstraints(pattern=ID_PATTERN.pattern)]


def utc_now() -> datetime:
    return datetime.now(UTC)


def describe_validation_error(error: ValidationError, prefix: str = "") -> str:
    """Format a pydantic error as `field.path: message` items joined by `; `."""
    parts = []
    for item in error.errors(include_url=False):
        path = ".".join(str(part) for part in (prefix, *item["loc"]) if part != "")
        message = item["msg"]
        if item["type"] == "string_pattern_mismatch" and path.endswith("id"):
            message = (
                "invalid id: use 1 to 48 letters, digits, '-' or '_'"
                f" (got {item.get('input')!r})"
            )
        parts.append(f"{path or 'body'}: {message}")
    return "; ".join(parts)


class Status(BaseModel):
    model_config = ConfigDict(extra="ignore")

    code: int = SUCCESS
    description: str = ""


class ModelOutputsSource(BaseModel):
    """Clarifai's APIPostModelOutputsCollectorSource."""

    model_config = ConfigDict(extra="forbid")

    model_user_id: str = ""
    model_app_id: str = ""
    model_id: str = ""
    model_version_id: str = ""
    post_inputs_key_id: str = ""
    caller_user_id: str = ""


class CollectorSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_post_model_outputs_collector_source: ModelOutputsSource | None = None


class Collector(BaseModel):
    """A collector as the API sends and receives it (every field of Clarifai's)."""

    model_config = ConfigDict(extra="forbid")

    id: str = ""
    description: str = ""
    created_at: datetime | None = None
    pre_queue_workflow_id: str = ""
    pre_queue_random_sample: float = 0.0
    post_queue_workflow_id: str = ""
    collector_source: CollectorSource | None = None
    status: Status | None = None
    collect_outputs: bool = False


class CollectorRecord(BaseModel):
    """A collector as stored in Redis and cached by workers.

    `post_inputs_key_encrypted` is the Fernet token of the post-inputs key; the plain
    key never reaches Redis.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    user_id: str
    app_id: str
    id: ResourceId
    description: str = ""
    created_at: datetime = Field(default_factory=utc_now)
    modified_at: datetime = Field(default_factory=utc_now)
    pre_queue_workflow_id: str = ""
    pre_queue_random_sample: float = Field(0.0, ge=0.0, le=1.0)
    post_queue_workflow_id: str = ""
    model_user_id: str
    model_app_id: str
    model_id: str
    model_version_id: str = ""
    caller_user_id: str = ""
    post_inputs_key_encrypted: str = ""
    status_code: Literal[52001, 52002] = COLLECTOR_ACTIVE
    collect_outputs: bool = False
    # Options of this service that Clarifai's Collector has no fields for; the REST
    # API carries them in the collector's `metadata` object.
    sample_key: str = ""
    collect_failed_predictions: bool = False

    @property
    def key(self) -> str:
        """The collector's identity inside the service: user, app and collector id."""
        return collector_key(self.user_id, self.app_id, self.id)

    @property
    def source_key(self) -> str:
        return source_key(self.model_user_id, self.model_app_id, self.model_id)

    @property
    def active(self) -> bool:
        return self.status_code == COLLECTOR_ACTIVE

    def to_api(self, post_inputs_key: str = "") -> dict[str, Any]:
        """Return the Clarifai JSON shape; the key is included only when given."""
        return {
            "id": self.id,
            "description": self.description,
            "created_at": rfc3339(self.created_at),
            "pre_queue_workflow_id": self.pre_queue_workflow_id,
            "pre_queue_random_sample": self.pre_queue_random_sample,
            "post_queue_workflow_id": self.post_queue_workflow_id,
            "collector_source": {
                "api_post_model_outputs_collector_source": {
                    "model_user_id": self.model_user_id,
                    "model_app_id": self.model_app_id,
                    "model_id": self.model_id,
                    "model_version_id": self.model_version_id,
                    "post_inputs_key_id": post_inputs_key,
                    "caller_user_id": self.caller_user_id,
                }
            },
            "status": {
                "code": self.status_code,
                "description": COLLECTOR_STATUS_DESCRIPTIONS[self.status_code],
            },
            "collect_outputs": self.collect_outputs,
        }


def collector_key(user_id: str, app_id: str, collector_id: str) -> str:
    return f"{user_id}/{app_id}/{collector_id}"


def source_key(model_user_id: str, model_app_id: str, model_id: str) -> str:
    return f"{model_user_id}/{model_app_id}/{model_id}"


def rfc3339(moment: datetime) -> str:
    return (
        moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    )


# --- Workflows ---------------------------------------------------------------


class ModelVersion(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str = ""


class OutputInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    params: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)


class WorkflowModel(BaseModel):
    """The operator model of a node, defined inline.

    A model whose `output_info.params.base_url` is set is served over HTTP with
    Clarifai's PostModelOutputs API; `output_info.params.api_key` is its key.
    """

    model_config = ConfigDict(extra="allow")

    id: str = ""
    user_id: str = ""
    app_id: str = ""
    model_type_id: str = ""
    model_version: ModelVersion | None = None
    output_info: OutputInfo = Field(default_factory=OutputInfo)


class NodeInput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    node_id: str


class WorkflowNode(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: ResourceId
    model: WorkflowModel
    node_inputs: list[NodeInput] = Field(default_factory=list)
    suppress_output: bool = False


class Workflow(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: ResourceId
    description: str = ""
    nodes: list[WorkflowNode] = Field(min_length=1)
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime | None = None
    modified_at: datetime | None = None


# --- API keys and knowledge graph ----------------------------------------------


class ApiKeyRecord(BaseModel):
    """What Redis stores for a key, under the key's SHA-256 hash."""

    model_config = ConfigDict(frozen=True)

    key_hash: str
    user_id: str
    app_id: str = ""  # empty for a personal access token
    scopes: tuple[str, ...] = ("All",)
    kind: Literal["app_key", "pat"] = "app_key"
    created_at: datetime = Field(default_factory=utc_now)
    description: str = ""


class ConceptRef(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1)
    name: str = ""
    app_id: str = ""
    user_id: str = ""


class ConceptRelation(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str = ""
    subject_concept: ConceptRef
    object_concept: ConceptRef
    predicate: Literal["synonym", "hyponym", "hypernym"]
    knowledge_graph_id: str = ""


# --- Prediction events ----------------------------------------------------------


class Caller(BaseModel):
    model_config = ConfigDict(extra="ignore")

    user_id: str = Field(min_length=1)
    app_id: str = ""


class PredictionEvent(BaseModel):
    """The envelope of one predict call. Outputs are validated one by one with
    `PredictionOutput`, so that one invalid output does not reject the others."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1, max_length=256)
    created_at: datetime
    caller: Caller
    outputs: list[dict[str, Any]] = Field(
        min_length=1, max_length=MAX_OUTPUTS_PER_EVENT
    )


class OutputModel(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1)
    user_id: str = Field(min_length=1)
    app_id: str = Field(min_length=1)
    model_version: ModelVersion | None = None


class Image(BaseModel):
    model_config = ConfigDict(extra="allow")

    url: str = ""
    base64: str = ""


class Text(BaseModel):
    model_config = ConfigDict(extra="allow")

    raw: str = ""
    url: str = ""


class InputData(BaseModel):
    model_config = ConfigDict(extra="allow")

    image: Image | None = None
    text: Text | None = None
    metadata: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _has_content(self) -> InputData:
        image = self.image is not None and bool(self.image.url or self.image.base64)
        text = self.text is not None and bool(self.text.raw or self.text.url)
        if not (image or text):
            raise ValueError(
                "expected image.url, image.base64, text.raw or text.url to be set"
            )
        return self


class OutputInput(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1)
    data: InputData


class Concept(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1)
    name: str = ""
    value: float = Field(ge=0.0, le=1.0)


class OutputData(BaseModel):
    model_config = ConfigDict(extra="allow")

    concepts: list[Concept] = Field(default_factory=list)


class OutputStatus(BaseModel):
    model_config = ConfigDict(extra="allow")

    code: int = SUCCESS


class PredictionOutput(BaseModel):
    """One element of a PostModelOutputs response's outputs[]."""

    model_config = ConfigDict(extra="allow")

    id: str = ""
    model: OutputModel
    input: OutputInput
    data: OutputData = Field(default_factory=OutputData)
    status: OutputStatus = Field(default_factory=OutputStatus)

    @field_validator("input")
    @classmethod
    def _input_id_is_not_blank(cls, value: OutputInput) -> OutputInput:
        if not value.id.strip():
            raise ValueError("input.id must not be blank")
        return value
