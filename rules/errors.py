"""Exceptions raised by the rules package."""

from __future__ import annotations


class RuleConfigError(ValueError):
    """Invalid workflow or operator configuration, raised when it is compiled.

    `path` locates the invalid value in the workflow JSON (for example
    `nodes[0].model.output_info.params.keep_fraction`) and `detail` describes what
    was expected and what was found.
    """

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"{path}: {detail}" if path else detail)
        self.path = path
        self.detail = detail

    def with_prefix(self, prefix: str) -> RuleConfigError:
        """Return a copy whose path starts with `prefix`, for errors in nested parts."""
        if not self.path:
            path = prefix
        elif self.path.startswith("["):
            path = prefix + self.path
        else:
            path = f"{prefix}.{self.path}"
        return RuleConfigError(path, self.detail)


class RemoteOutputMissingError(LookupError):
    """A remote model node ran without its output in `EvalContext.remote_outputs`."""

    def __init__(self, node_id: str) -> None:
        super().__init__(
            f"no output for remote model node {node_id!r} in"
            " EvalContext.remote_outputs; call the model (see remote_nodes) and"
            " store its output data under the node id before running the workflow"
        )
        self.node_id = node_id
