"""Bytes in, models out, and back: the only place that turns a Kafka message value into a
``RerankRequest`` or a model into a message value."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, Discriminator, TypeAdapter, ValidationError

from schemas.request import (
    DEFAULT_MAX_DOCUMENT_CHARS,
    DEFAULT_MAX_DOCUMENTS,
    DEFAULT_MAX_QUERY_CHARS,
    DOCUMENT_AS_OBJECT,
    DOCUMENT_AS_STRING,
    REQUEST_ID_MAX_CHARS,
    Document,
    PrefilterOptions,
    RerankRequest,
    rank_text,
)
from schemas.response import ErrorCode, ErrorDetail, ErrorResponse, RerankResponse

__all__ = [
    "RequestError",
    "RequestLimits",
    "encode",
    "parse_request",
    "parse_response",
]

# A message with more problems than this lists the first ones and counts the rest: enough
# to fix a request, short enough for a log line.
_MAX_ERRORS_IN_MESSAGE = 5
# Field names come from the client and may be arbitrarily long.
_MAX_NAME_CHARS_IN_MESSAGE = 64


@dataclass(frozen=True)
class RequestLimits:
    """Sizes beyond which a request is rejected with ``too_large``.

    Characters are Unicode code points (Python ``len``). None means no limit. The
    cross-encoder truncates long inputs to its sequence length anyway; these limits bound
    the memory and the tokenizer time a single request can take.
    """

    max_documents: int = DEFAULT_MAX_DOCUMENTS
    max_query_chars: int | None = DEFAULT_MAX_QUERY_CHARS
    max_document_chars: int | None = DEFAULT_MAX_DOCUMENT_CHARS

    def __post_init__(self) -> None:
        if self.max_documents < 1:
            raise ValueError(f"max_documents must be at least 1, got {self.max_documents}")
        for name in ("max_query_chars", "max_document_chars"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 or None, got {value}")


class RequestError(Exception):
    """A request that cannot be served; ``to_response()`` is the answer to send.

    ``request_id`` is None when the message was too broken to read one from; such messages
    belong on a dead-letter topic, since there is no key to answer under.
    """

    def __init__(self, code: ErrorCode, message: str, request_id: str | None = None) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id

    def to_response(self) -> ErrorResponse:
        return ErrorResponse(
            request_id=self.request_id,
            error=ErrorDetail(code=self.code, message=self.message),
        )


def parse_request(
    raw: bytes | bytearray | memoryview | None,
    limits: RequestLimits = RequestLimits(),
    served_models: Collection[str] | None = None,
) -> RerankRequest:
    """Decode and validate one request message value.

    Raises ``RequestError``, checking in this order:

    1. not UTF-8, not JSON (NaN and Infinity are not JSON; nesting too deep to parse), or
       not a JSON object: ``invalid_request`` with request_id None;
    2. from here on request_id is whatever the message carries, if that is a valid id
       (a string of 1-128 characters), else None;
    3. more documents than ``limits.max_documents``, a query or document text longer than
       allowed: ``too_large``. The document count is checked before anything else looks at
       the documents, so a 100,000-document message is cheap to reject;
    4. anything the ``RerankRequest`` schema rejects: ``invalid_request``, naming the field
       path (``documents[3].text``) of each problem;
    5. a ``model`` not in ``served_models`` (when both are given): ``unknown_model``.

    The deadline is not checked here: that needs a clock, and the worker checks it when it
    is about to spend time on the request.
    """
    payload = _decode_json_object(raw)
    request_id = _recover_request_id(payload)
    _check_size(payload, limits, request_id)
    try:
        request = RerankRequest.model_validate(payload)
    except ValidationError as exc:
        raise RequestError(ErrorCode.INVALID_REQUEST, _describe(exc), request_id) from None
    if request.model is not None and served_models is not None:
        if request.model not in served_models:
            served = ", ".join(repr(m) for m in sorted(served_models)) or "none"
            raise RequestError(
                ErrorCode.UNKNOWN_MODEL,
                f"model {_quote(request.model)} is not served here; served models: {served}",
                request_id,
            )
    return request


def encode(message: RerankResponse | ErrorResponse | RerankRequest) -> bytes:
    """Compact UTF-8 JSON for a message value.

    Responses carry every field (``id`` and an error's ``request_id`` as null when there is
    none) except ``document``, which is left out unless it was asked for. Requests leave out
    fields that are None, which all mean "the default".
    """
    if isinstance(message, RerankRequest):
        return message.model_dump_json(exclude_none=True).encode("utf-8")
    if isinstance(message, (RerankResponse, ErrorResponse)):
        return message.model_dump_json().encode("utf-8")
    raise TypeError(f"cannot encode {type(message).__name__} as a message")


_RESPONSE_ADAPTER: TypeAdapter[RerankResponse | ErrorResponse] = TypeAdapter(
    Annotated[RerankResponse | ErrorResponse, Discriminator("status")]
)


def parse_response(raw: bytes | bytearray | memoryview) -> RerankResponse | ErrorResponse:
    """Decode a response message value (for clients, load generators and tests).

    Strict about JSON types, like ``parse_request``. Raises ``pydantic.ValidationError``
    when it is not a response this package would send.
    """
    return _RESPONSE_ADAPTER.validate_json(raw, strict=True)


def _decode_json_object(raw: bytes | bytearray | memoryview | None) -> dict[str, Any]:
    if raw is None:
        # A Kafka tombstone: a key with no value.
        raise RequestError(ErrorCode.INVALID_REQUEST, "message has no value")
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        # Not bytes(raw): bytes(12345) is 12345 NULs.
        raise TypeError(f"a message value is bytes, not {type(raw).__name__}")
    try:
        # Decoded explicitly: json.loads(bytes) would also accept UTF-16 and UTF-32.
        text = str(raw, "utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(
            ErrorCode.INVALID_REQUEST,
            f"message is not valid UTF-8: {exc.reason} at byte {exc.start}",
        ) from None
    try:
        payload = json.loads(text, parse_constant=_reject_non_json_constant)
    except RecursionError:
        raise RequestError(
            ErrorCode.INVALID_REQUEST, "message is not usable JSON: nested too deeply"
        ) from None
    except json.JSONDecodeError as exc:
        raise RequestError(
            ErrorCode.INVALID_REQUEST,
            f"message is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
        ) from None
    except ValueError as exc:
        # NaN/Infinity (see _reject_non_json_constant), or an integer with more digits than
        # Python will convert (sys.get_int_max_str_digits).
        raise RequestError(ErrorCode.INVALID_REQUEST, f"message is not usable JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise RequestError(
            ErrorCode.INVALID_REQUEST,
            f"message should be a JSON object, got {_json_type_name(payload)}",
        )
    return payload


def _reject_non_json_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _recover_request_id(payload: Mapping[str, Any]) -> str | None:
    # Validated on its own so that a request with other problems can still be answered
    # under its key; an id that is itself invalid cannot be.
    value = payload.get("request_id")
    if not isinstance(value, str) or not 1 <= len(value) <= REQUEST_ID_MAX_CHARS:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return value


def _check_size(payload: Mapping[str, Any], limits: RequestLimits, request_id: str | None) -> None:
    # Only looks at values of the right type; wrong types are the schema's to report.
    documents = payload.get("documents")
    if isinstance(documents, list) and len(documents) > limits.max_documents:
        raise RequestError(
            ErrorCode.TOO_LARGE,
            f"documents has {len(documents)} items; the limit is {limits.max_documents} "
            "(max_documents)",
            request_id,
        )
    query = payload.get("query")
    if (
        limits.max_query_chars is not None
        and isinstance(query, str)
        and len(query) > limits.max_query_chars
    ):
        raise RequestError(
            ErrorCode.TOO_LARGE,
            f"query has {len(query)} characters; the limit is {limits.max_query_chars} "
            "(max_query_chars)",
            request_id,
        )
    if limits.max_document_chars is None or not isinstance(documents, list):
        return
    rank_fields = payload.get("rank_fields")
    if rank_fields is not None:
        too_long = _too_long_fielded(documents, rank_fields, limits.max_document_chars)
    else:
        too_long = _too_long_plain(documents, limits.max_document_chars)
    if too_long:
        path, length = too_long[0]
        others = len(too_long) - 1
        more = f"; {others} more {'is' if others == 1 else 'are'} too long" if others else ""
        raise RequestError(
            ErrorCode.TOO_LARGE,
            f"{path} has {length} characters; the limit is {limits.max_document_chars} "
            f"(max_document_chars){more}",
            request_id,
        )


def _too_long_plain(documents: list[Any], limit: int) -> list[tuple[str, int]]:
    too_long = []
    for i, item in enumerate(documents):
        if isinstance(item, str):
            path, text = f"documents[{i}]", item
        elif isinstance(item, dict) and isinstance(item.get("text"), str):
            path, text = f"documents[{i}].text", item["text"]
        else:
            continue
        if len(text) > limit:
            too_long.append((path, len(text)))
    return too_long


def _too_long_fielded(documents: list[Any], rank_fields: Any, limit: int) -> list[tuple[str, int]]:
    # The limit bounds what is tokenized: the named fields joined, not the whole object.
    if not isinstance(rank_fields, list) or not all(isinstance(f, str) for f in rank_fields):
        return []
    too_long = []
    for i, item in enumerate(documents):
        if isinstance(item, dict) and all(isinstance(item.get(f), str) for f in rank_fields):
            length = len(rank_text(item, rank_fields))
            if length > limit:
                too_long.append((f"documents[{i}] (its rank_fields joined)", length))
    return too_long


def _describe(exc: ValidationError) -> str:
    """One readable line for all of a request's schema problems."""
    errors = exc.errors(include_url=False)
    described = [_describe_one(error) for error in errors[:_MAX_ERRORS_IN_MESSAGE]]
    if len(errors) > _MAX_ERRORS_IN_MESSAGE:
        described.append(f"and {len(errors) - _MAX_ERRORS_IN_MESSAGE} more problems")
    return "; ".join(described)


def _describe_one(error: Mapping[str, Any]) -> str:
    loc = _client_location(error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        *parent, name = loc
        allowed = ", ".join(_fields_at(parent))
        message = f"unknown field {_quote(str(name))} (allowed: {allowed})"
        if parent[:1] == ["documents"]:
            message += ": other fields need rank_fields"
        return f"{_path(parent)}: {message}" if parent else message
    if kind in ("rank_field_missing", "rank_field_type"):
        # loc ends with the field's name, which the client chose: quoted and shortened.
        *parent, name = loc
        message = f"field {_quote(str(name))}, {error['msg']}"
        if kind == "rank_field_type":
            message += f" (got {_json_type_name(error.get('input'))})"
        return f"{_path(parent)}: {message}"
    if kind == "missing":
        *parent, name = loc
        message = f"missing required field {_quote(str(name))}"
        return f"{_path(parent)}: {message}" if parent else message
    message = _JSON_WORDED_MESSAGES.get(kind, error["msg"])
    if kind in ("too_short", "too_long"):
        # pydantic says "List should have at least 1 item after validation, not 0".
        bound = "at least" if kind == "too_short" else "at most"
        limit = error["ctx"]["min_length" if kind == "too_short" else "max_length"]
        items = "item" if limit == 1 else "items"
        message = f"should have {bound} {limit} {items}, got {error['ctx']['actual_length']}"
    value = error.get("input")
    if kind.endswith("_type"):
        message += f" (got {_json_type_name(value)})"
    return f"{_path(loc)}: {message}" if loc else message


# pydantic's wording names Python types where a client thinks in JSON types.
_JSON_WORDED_MESSAGES = {
    "model_type": "Input should be an object",
    "model_attributes_type": "Input should be an object",
    "dict_type": "Input should be an object",
    "list_type": "Input should be an array",
    # pydantic's "unable to parse raw data as a unicode string" for "\ud800" in a string
    # with a length constraint (see schemas.request._require_valid_unicode for the others).
    "string_unicode": "String is not valid Unicode: it contains an unpaired UTF-16 surrogate",
}


def _client_location(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    # pydantic puts the union tag after the list index ("documents", 3, "object", "text");
    # the client only knows "documents[3].text".
    if (
        len(loc) >= 3
        and loc[0] == "documents"
        and isinstance(loc[1], int)
        and loc[2] in (DOCUMENT_AS_STRING, DOCUMENT_AS_OBJECT)
    ):
        return loc[:2] + loc[3:]
    return loc


def _fields_at(parent: list[int | str]) -> list[str]:
    model: type[BaseModel] = RerankRequest
    if parent[:1] == ["prefilter"]:
        model = PrefilterOptions
    elif parent[:1] == ["documents"]:
        model = Document
    return list(model.model_fields)


def _path(loc: list[int | str] | tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("." if path else "") + str(part)
    return path


def _quote(name: str) -> str:
    if len(name) > _MAX_NAME_CHARS_IN_MESSAGE:
        name = name[:_MAX_NAME_CHARS_IN_MESSAGE] + "..."
    return repr(name)


def _json_type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
