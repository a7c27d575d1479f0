"""Types of the C extension agents._stage_one (agents/_stage_one.c)."""

from typing import Any

Plans = dict[str, tuple[Any, ...]]
Decisions = list[tuple[Any, ...]]

PLAN_SIZE: int
SHA_INSTRUCTIONS: int

def check_output(output: Any) -> tuple[int, str, str, str] | None: ...
def route_outputs(
    outputs: list[Any], caller_user_id: str, plans: Plans
) -> tuple[tuple[int, int], Decisions] | None: ...
def route_event(
    value: bytes, plans: Plans, touched: list[tuple[Any, ...]]
) -> tuple[int, int, int, list[tuple[str, list[dict[str, Any]]]]] | None: ...
def loads(document: bytes) -> tuple[Any] | None: ...
def sha256(data: bytes, portable: bool = False) -> bytes: ...
