"""Reading one JSON object off the wire, with the contract's errors."""

from __future__ import annotations

from typing import Any

import orjson

from detector.errors import ContractError


def load_object(raw: bytes) -> dict[str, Any]:
    """The JSON object in ``raw``; raises :class:`ContractError` (``not_json`` or
    ``not_object``) for anything else."""
    try:
        d = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ContractError("not_json", None, f"not valid JSON: {exc}") from None
    if not isinstance(d, dict):
        raise ContractError("not_object", None, "expected a JSON object")
    return d
