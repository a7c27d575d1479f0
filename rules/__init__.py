"""Sampling rules and workflow operators for collectors, as pure functions.

Nothing here does I/O. Data are plain dicts in Clarifai's JSON shape with snake_case
field names, as decoded by orjson, and operators do not copy them unless they change
them.
"""

from rules.context import Data, EvalContext, Operator, Relation
from rules.errors import RemoteOutputMissingError, RuleConfigError
from rules.operators import OPERATORS, compile_operator, is_remote_model
from rules.sampling import keep_random_sample, sample_fraction
from rules.workflow import (
    CompiledWorkflow,
    WorkflowResult,
    compile_workflow,
    merge_outputs,
    remote_nodes,
)

__all__ = [
    "OPERATORS",
    "CompiledWorkflow",
    "Data",
    "EvalContext",
    "Operator",
    "Relation",
    "RemoteOutputMissingError",
    "RuleConfigError",
    "WorkflowResult",
    "compile_operator",
    "compile_workflow",
    "is_remote_model",
    "keep_random_sample",
    "merge_outputs",
    "remote_nodes",
    "sample_fraction",
]
