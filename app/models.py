"""Pydantic models: collectors, workflows, API keys and prediction events.

JSON field names are Clarifai's proto field names (snake_case), so a collector read
from Redis, sent over REST or converted to a protobuf message has one shape.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, NamedTuple

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
    """The record Redis keeps for an API key, under the key's SHA-256 hash."""

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
    # Any JSON value, so that an output that is not an object is dead-lettered on
    # its own by `output_fields` while the other outputs are processed.
    outputs: list[Any] = Field(min_length=1, max_length=MAX_OUTPUTS_PER_EVENT)


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


# Deeper metadata could not be encoded again on the way to the queue topic (orjson
# stops at 254 levels), and no real metadata needs it.
MAX_METADATA_DEPTH = 64


_CONTAINERS = (dict, list)


def nesting_exceeds(value: dict[str, Any] | list[Any], limit: int) -> bool:
    """Return whether JSON objects and arrays in `value`, itself an object or an
    array at level 1, nest deeper than `limit`."""
    return _nests_deeper(value, limit - 1)


def _nests_deeper(container: dict[str, Any] | list[Any], levels_left: int) -> bool:
    # The recursion stops one level below the limit, however deep the value nests.
    if levels_left < 0:
        return True
    children = container.values() if isinstance(container, dict) else container
    for child in children:
        if isinstance(child, _CONTAINERS) and _nests_deeper(child, levels_left - 1):
            return True
    return False


class InputData(BaseModel):
    model_config = ConfigDict(extra="allow")

    image: Image | None = None
    text: Text | None = None
    metadata: dict[str, Any] | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata_is_not_too_deep(
        cls, value: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        if value is not None and nesting_exceeds(value, MAX_METADATA_DEPTH):
            raise ValueError(
                f"metadata is nested more than {MAX_METADATA_DEPTH} levels deep; "
                "flatten it"
            )
        return value

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
    # Strict, because the rules read the raw output. A value that pydantic would
    # convert ("0.9", true) is rejected, not passed on unconverted. A missing value
    # is 0.0, because protobuf's JSON form leaves out zero values.
    value: float = Field(0.0, ge=0.0, le=1.0, strict=True)


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


class OutputFields(NamedTuple):
    """The fields of a validated output that stage one reads."""

    status_code: int
    source_key: str
    version_id: str
    input_id: str


def output_fields(output: Any) -> OutputFields:
    """Validate one output with `PredictionOutput` and return its routing fields.

    Raises pydantic's ValidationError when the output is invalid. Outputs that
    `fast_output_fields` accepts skip the pydantic validation.
    """
    fields = fast_output_fields(output)
    if fields is not None:
        return fields
    checked = PredictionOutput.model_validate(output)
    model = checked.model
    return OutputFields(
        checked.status.code,
        source_key(model.user_id, model.app_id, model.id),
        model.model_version.id if model.model_version else "",
        checked.input.id,
    )


def fast_output_fields(output: Any) -> OutputFields | None:
    """Return the routing fields of an output that `PredictionOutput` is sure to
    accept, or None when only its full validation can tell.

    Optimised by hand because it runs for every prediction. On the benchmark's
    outputs (docs/benchmarks.md), pydantic took about 23 µs an output, most of it
    building the nested models, and this check about 8 µs. It accepts only plain
    JSON types (str, int, float, dict, list) and no value that pydantic would
    convert, so it accepts a subset of what `PredictionOutput` accepts and returns
    the same fields. Anything else returns None and goes through pydantic, which
    also writes the error messages. Keep it in step with the models above: it must
    never accept what they reject.
    """
    if type(output) is not dict:
        return None
    if type(output.get("id", "")) is not str:
        return None

    model = output.get("model")
    if type(model) is not dict:
        return None
    model_id = model.get("id")
    user_id = model.get("user_id")
    app_id = model.get("app_id")
    if not (_is_non_empty_str(model_id) and _is_non_empty_str(user_id)):
        return None
    if not _is_non_empty_str(app_id):
        return None
    version = model.get("model_version")
    version_id = ""
    if version is not None:
        if type(version) is not dict:
            return None
        version_id = version.get("id", "")
        if type(version_id) is not str:
            return None

    input_document = output.get("input")
    if type(input_document) is not dict:
        return None
    input_id = input_document.get("id")
    if type(input_id) is not str or not input_id.strip():
        return None
    if not _is_plain_input_data(input_document.get("data")):
        return None

    if "data" in output and not _are_plain_concepts(output["data"]):
        return None
    status_code = SUCCESS
    if "status" in output:
        status = output["status"]
        if type(status) is not dict:
            return None
        status_code = status.get("code", SUCCESS)
        if type(status_code) is not int:
            return None
    return OutputFields(
        status_code, f"{user_id}/{app_id}/{model_id}", version_id, input_id
    )


def _is_non_empty_str(value: Any) -> bool:
    return type(value) is str and value != ""


# The InputData parts that can carry content, each with its two content fields.
_CONTENT_FIELDS = (("image", "url", "base64"), ("text", "raw", "url"))


def _is_plain_input_data(data: Any) -> bool:
    """Check `InputData` with its content rule, for plain JSON values only."""
    if type(data) is not dict:
        return False
    metadata = data.get("metadata")
    if metadata is not None:
        if type(metadata) is not dict:
            return False
        if not all(type(key) is str for key in metadata):
            return False
        if nesting_exceeds(metadata, MAX_METADATA_DEPTH):
            return False
    has_content = False
    for field_name, first, second in _CONTENT_FIELDS:
        part = data.get(field_name)
        if part is None:
            continue
        if type(part) is not dict:
            return False
        first_value = part.get(first, "")
        second_value = part.get(second, "")
        if type(first_value) is not str or type(second_value) is not str:
            return False
        has_content = has_content or first_value != "" or second_value != ""
    return has_content


def _are_plain_concepts(data: Any) -> bool:
    """Check `OutputData`: every concept has a non-empty id, a string name if any,
    and a number value in [0, 1]."""
    if type(data) is not dict:
        return False
    if "concepts" not in data:
        return True
    concepts = data["concepts"]
    if type(concepts) is not list:
        return False
    for concept in concepts:
        if type(concept) is not dict:
            return False
        concept_id = concept.get("id")
        if type(concept_id) is not str or concept_id == "":
            return False
        if type(concept.get("name", "")) is not str:
            return False
        value = concept.get("value")
        if type(value) is not float and type(value) is not int:
            return False
        if not 0.0 <= value <= 1.0:
            return False
    return True
