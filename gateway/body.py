"""Request bodies -> validated models, or a 400 that names the field.

Shared by every API's schema: strict JSON object, the fields an API refuses
(named in ``param``), then pydantic validation with the deepest error's
location as the parameter path (``messages[0].content[1].source``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .errors import APIError

M = TypeVar("M", bound=BaseModel)


MAX_JSON_DEPTH = 64  # nested arrays/objects; deep enough for any tool's JSON schema
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what MessagePack carries


def json_object(raw: bytes) -> dict[str, Any]:
    """A JSON object, nested at most ``MAX_JSON_DEPTH`` deep and holding only
    what the worker's wire format can carry (no lone UTF-16 surrogates, no
    integer past 64 bits): past this point nothing recurses without bound
    or fails to encode."""
    try:
        data = json.loads(raw)
    except RecursionError:
        raise _too_deep() from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise APIError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object", code="invalid_json")
    _check_structure(data)
    return data


def _too_deep() -> APIError:
    return APIError(400, f"request body is nested more than {MAX_JSON_DEPTH} levels deep", code="json_too_deep")


def _check_structure(data: Any) -> None:
    """Depth and text, checked without recursion (one pass, every value once)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            _check_text(value)
        elif isinstance(value, int) and not _INT_MIN <= value <= _INT_MAX:
            raise APIError(400, f"request body holds an integer too large to process ({str(value)[:40]}...)",
                           code="invalid_value")
        elif isinstance(value, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise _too_deep()
            children: Iterable[Any] = value
            if isinstance(value, dict):
                for key in value:
                    _check_text(key)
                children = value.values()
            stack.extend((child, depth + 1) for child in children if isinstance(child, (str, int, dict, list)))


def _check_text(text: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise APIError(400, "request body contains a lone UTF-16 surrogate (\\ud800-\\udfff): not valid Unicode text",
                       code="invalid_value") from None


def validate(model: type[M], data: dict[str, Any], *, tags: frozenset[str] = frozenset()) -> M:
    """``tags``: the discriminator values of the model's tagged unions,
    which pydantic puts in error locations but are not field names."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid(exc, tags) from None


def invalid(exc: ValidationError, tags: frozenset[str] = frozenset()) -> APIError:
    # For unions pydantic reports every branch; the deepest location is
    # the one that names what is actually wrong.
    err = max(exc.errors(), key=lambda e: len(e.get("loc", ())))
    param = param_path([str(p) for p in err.get("loc", ())], tags)
    msg = err.get("msg", "invalid value").removeprefix("Value error, ")
    return APIError(400, f"{param}: {msg}" if param else msg, param=param, code="invalid_value")


def param_path(loc: list[str], tags: frozenset[str] = frozenset()) -> str | None:
    """pydantic's location -> ``messages[0].content[1]`` style. A tag is
    skipped where a union's member is chosen: after a list index, or as the
    first part below a field (a field's own name never repeats its parent's tag)."""
    out = ""
    for i, p in enumerate(loc):
        if p in tags and i > 0 and loc[i - 1] not in tags and (loc[i - 1].isdigit() or i + 1 < len(loc)):
            continue
        if p.isdigit():
            out += f"[{p}]"
        elif p in ("str", "list", "function-after", "none") or "[" in p or p[:1].isupper():
            continue  # union branch names (types, model classes), not fields
        else:
            out += ("." if out else "") + p
    return out or None


def parse_model(model: type[M], raw: bytes, *, refused: dict[str, str] | None = None, tags: frozenset[str] = frozenset()) -> M:
    """``raw`` as ``model``; a field in ``refused`` set to anything but null
    is a 400 naming it, with the reason given."""
    data = json_object(raw)
    for name, why in (refused or {}).items():
        if data.get(name) is not None:
            raise APIError(400, f"{name}: {why}", param=name, code="unsupported_parameter")
    return validate(model, data, tags=tags)
