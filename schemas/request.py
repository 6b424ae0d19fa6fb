"""The rerank request: what a client puts on the request topic.

The models are *strict*: JSON types must match exactly (no ``5`` where a string belongs, no
``"true"`` or ``1`` where a boolean belongs, no ``2.5`` or ``"2"`` where an integer belongs) and
unknown fields are rejected. One exception keeps the models and the exported JSON Schema in
agreement: JSON Schema's ``integer`` includes numbers written with a fraction of zero
(``2.0``, ``1e3``), and no standard validator can tell ``2.0`` from ``2``, so an integer field
accepts them too (as the integer they equal). Size limits that an operator configures (how many documents, how long
a text may be) are not part of the models; ``schemas.parsing.parse_request`` enforces them
so that they come back as ``too_large`` rather than ``invalid_request``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    GetJsonSchemaHandler,
    SerializerFunctionWrapHandler,
    StringConstraints,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, InitErrorDetails, PydanticCustomError

from vocabulary import PrefilterMethod, TruncationDirection

__all__ = [
    "Document",
    "FieldedDocument",
    "PrefilterOptions",
    "RerankRequest",
    "rank_text",
]

# Defaults of schemas.parsing.RequestLimits, kept here because the field descriptions (and
# so the JSON Schemas) quote them.
DEFAULT_MAX_DOCUMENTS = 2000
DEFAULT_MAX_QUERY_CHARS = 10_000
DEFAULT_MAX_DOCUMENT_CHARS = 200_000
REQUEST_ID_MAX_CHARS = 128
TOPIC_NAME_MAX_CHARS = 249
# Defaults of engines.EngineConfig (RERANK_MAX_CHUNKS_PER_DOC and the like), quoted by the
# descriptions; schemas does not import engines.
DEFAULT_MAX_CHUNKS_PER_DOC = 1
DEFAULT_CHUNK_OVERLAP_TOKENS = 32
DEFAULT_TRUNCATION_DIRECTION = "right"


def _require_valid_unicode(value: str) -> str:
    # JSON lets a client write an unpaired surrogate ("\ud800"); Python decodes it into a str
    # that cannot be encoded as UTF-8, so echoing it (request_id, returned documents) or
    # tokenizing it would fail later, far from the cause. Reject it here instead.
    # isascii() is O(1) on CPython, so ordinary ASCII text costs nothing. (pydantic itself
    # refuses such strings only where it checks a length, with a vaguer message.)
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise PydanticCustomError(
                "unpaired_surrogate",
                "String is not valid Unicode: it contains an unpaired UTF-16 surrogate at "
                "position {position}",
                {"position": exc.start},
            ) from None
    return value


# The only constraint on texts: they can be written back out as UTF-8. NUL and other
# control characters are text too. (Length constraints go before this validator in an
# Annotated: after it, pydantic no longer knows the value is a string and words its
# messages for lists.)
_VALID_UNICODE = AfterValidator(_require_valid_unicode)
UnicodeText = Annotated[str, _VALID_UNICODE]
NonEmptyUnicodeText = Annotated[str, StringConstraints(min_length=1), _VALID_UNICODE]
RequestId = Annotated[
    str, StringConstraints(min_length=1, max_length=REQUEST_ID_MAX_CHARS), _VALID_UNICODE
]

def _integral_float_as_int(value: Any) -> Any:
    # JSON Schema (and so every client validating with our schema) counts 2.0 as an integer;
    # refusing what the published contract allows would fail such clients at run time. Only
    # integral floats change: 2.5, true, "2" still reach the strict int check and fail there.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# Integers as JSON Schema defines them: 2 or 2.0, not 2.5 (the JSON Schema stays "integer").
# The bound sits inside, on the int: on the outer field pydantic could not place it in the
# JSON Schema (it would write "ge" instead of "minimum").
_INTEGRAL_FLOAT_AS_INT = BeforeValidator(_integral_float_as_int)
PositiveJsonInteger = Annotated[int, Field(ge=1), _INTEGRAL_FLOAT_AS_INT]
NonNegativeJsonInteger = Annotated[int, Field(ge=0), _INTEGRAL_FLOAT_AS_INT]
PRIORITY_BOUND = 1000
Priority = Annotated[int, Field(ge=-PRIORITY_BOUND, le=PRIORITY_BOUND), _INTEGRAL_FLOAT_AS_INT]

_ILLEGAL_TOPIC_CHAR = "[^a-zA-Z0-9._-]"
_ILLEGAL_TOPIC_CHAR_RE = re.compile(_ILLEGAL_TOPIC_CHAR)


def _require_kafka_topic_name(value: str) -> str:
    if _ILLEGAL_TOPIC_CHAR_RE.search(value) or value in (".", ".."):
        raise PydanticCustomError(
            "kafka_topic_name",
            "String should be a legal Kafka topic name: 1-{max} characters of "
            "[a-zA-Z0-9._-], and not '.' or '..'",
            {"max": TOPIC_NAME_MAX_CHARS},
        )
    return value


# The JSON Schema is written by hand because the obvious `pattern: ^[a-zA-Z0-9._-]+$`
# means different things to different engines: Python's re (used by the `jsonschema`
# package) lets `$` match before a trailing newline, so "topic\n" would pass there and fail
# here. "Contains no illegal character" has no anchors and reads the same everywhere.
KafkaTopicName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=TOPIC_NAME_MAX_CHARS),
    AfterValidator(_require_kafka_topic_name),
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": TOPIC_NAME_MAX_CHARS,
            "not": {"anyOf": [{"pattern": _ILLEGAL_TOPIC_CHAR}, {"enum": [".", ".."]}]},
        }
    ),
]


class Document(BaseModel):
    """A document given as an object rather than a bare string."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: UnicodeText | None = Field(
        default=None,
        description="Caller's identifier for the document, echoed in its result; "
        "not required to be unique.",
    )
    text: UnicodeText = Field(
        description="The document text (may be empty). Longer than max_document_chars "
        f"(default {DEFAULT_MAX_DOCUMENT_CHARS}) is rejected with too_large."
    )
    score: float | None = Field(
        default=None,
        allow_inf_nan=False,
        description="The caller's own score of the document (its retriever's; higher = more "
        "relevant), read only by prefilter method client, which needs one on every document.",
    )


class FieldedDocument(BaseModel):
    """A document given as an object of named fields, in a request with rank_fields: its scored
    text is made of the fields rank_fields names; the others travel along (and are echoed with
    return_documents)."""

    # Any further field is allowed, with any JSON value.
    model_config = ConfigDict(extra="allow", strict=True)

    id: UnicodeText | None = Field(
        default=None,
        description="Caller's identifier for the document, echoed in its result; "
        "not required to be unique.",
    )
    score: float | None = Field(
        default=None,
        allow_inf_nan=False,
        description="The caller's own score of the document, as for a document without "
        "rank_fields.",
    )

    @model_validator(mode="after")
    def _writable_back_out(self) -> FieldedDocument:
        # The other fields are any JSON and are echoed as sent, so they must be writable as
        # JSON in UTF-8: no unpaired surrogate (see _require_valid_unicode) and no number
        # beyond a double's range (1e999 reads as infinity).
        try:
            written = json.dumps(self.model_extra, ensure_ascii=False, allow_nan=False)
        except ValueError:
            raise PydanticCustomError(
                "number_out_of_range", "A field holds a number beyond a double's range"
            ) from None
        if not written.isascii():
            try:
                written.encode("utf-8")
            except UnicodeEncodeError:
                raise PydanticCustomError(
                    "unpaired_surrogate",
                    "A field's name or value is not valid Unicode: it contains an unpaired "
                    "UTF-16 surrogate",
                ) from None
        return self

    def field(self, name: str) -> Any:
        """The value of field ``name`` (KeyError when the document has none)."""
        # Not getattr: a field may be called "copy" or "model_dump".
        if name in type(self).model_fields:
            if name not in self.model_fields_set:
                raise KeyError(name)
            return getattr(self, name)
        return (self.model_extra or {})[name]

    def as_sent(self) -> dict[str, Any]:
        """The object as the client sent it (its null fields too: they are data here)."""
        declared = {n: getattr(self, n) for n in type(self).model_fields if n in self.model_fields_set}
        return declared | (self.model_extra or {})


def rank_text(document: Any, rank_fields: Sequence[str]) -> str:
    """The scored text of a document with named fields: ``"{name}: {value}"`` lines in
    rank_fields order (``title: Kafka\\ntext: A log.``). ``document`` is a
    ``FieldedDocument`` or a JSON object whose named fields are strings."""
    read = document.field if isinstance(document, FieldedDocument) else document.__getitem__
    return "\n".join(f"{name}: {read(name)}" for name in rank_fields)


def _require_object_with_rank_fields(value: Any) -> Any:
    if not isinstance(value, (dict, FieldedDocument)):
        raise PydanticCustomError(
            "document_type",
            "Input should be an object: with rank_fields, a document's scored text is made of "
            "its named fields",
        )
    return value


_FIELDED_DOCUMENTS: TypeAdapter[list[FieldedDocument]] = TypeAdapter(
    Annotated[
        list[Annotated[FieldedDocument, BeforeValidator(_require_object_with_rank_fields)]],
        Field(min_length=1),
    ]
)


def _fielded_documents(value: Any, rank_fields: Sequence[str]) -> list[FieldedDocument]:
    """``value`` read as documents with named fields; every field rank_fields names must be a
    string in every document (an error at ``documents[i].<name>`` where not)."""
    documents = _FIELDED_DOCUMENTS.validate_python(value, strict=True)
    errors: list[InitErrorDetails] = []
    for i, document in enumerate(documents):
        for name in rank_fields:
            try:
                field = document.field(name)
            except KeyError:
                error = PydanticCustomError("rank_field_missing", "named in rank_fields, is missing")
                errors.append(InitErrorDetails(type=error, loc=(i, name), input=document.as_sent()))
                continue
            if not isinstance(field, str):
                error = PydanticCustomError(
                    "rank_field_type", "named in rank_fields, should be a string"
                )
                errors.append(InitErrorDetails(type=error, loc=(i, name), input=field))
    if errors:
        # pydantic places these below "documents", like the errors of its own validation.
        raise ValidationError.from_exception_data("documents", errors)
    return documents


def _require_distinct(names: list[str]) -> list[str]:
    if len(set(names)) < len(names):
        raise PydanticCustomError("duplicate_rank_field", "should name each field once")
    return names


RankFields = Annotated[
    list[NonEmptyUnicodeText],
    Field(min_length=1, json_schema_extra={"uniqueItems": True}),
    AfterValidator(_require_distinct),
]


# Tags of the two ways to give a document. parse_request strips them from error locations,
# so a client reads "documents[3].text", not "documents[3].object.text".
DOCUMENT_AS_STRING = "string"
DOCUMENT_AS_OBJECT = "object"


def _document_form(value: Any) -> str | None:
    # Choosing the branch from the JSON type (instead of trying both) gives one error per bad
    # document instead of one per branch.
    if isinstance(value, str):
        return DOCUMENT_AS_STRING
    if isinstance(value, (dict, Document)):
        return DOCUMENT_AS_OBJECT
    return None


DocumentInput = Annotated[
    Annotated[UnicodeText, Tag(DOCUMENT_AS_STRING)] | Annotated[Document, Tag(DOCUMENT_AS_OBJECT)],
    Discriminator(
        _document_form,
        custom_error_type="document_type",
        custom_error_message="Input should be a string or an object with 'text' and optional 'id'",
    ),
]


class PrefilterOptions(BaseModel):
    """Controls the prefilter that cuts a large request down before the cross-encoder
    scores it."""

    model_config = ConfigDict(extra="forbid", strict=True)

    enabled: bool | None = Field(
        default=None,
        description="true: always prefilter; false: never; null or absent: the worker "
        "decides from the request size.",
    )
    keep: PositiveJsonInteger | None = Field(
        default=None,
        description="How many documents the prefilter passes to the cross-encoder; "
        "absent: the worker's default.",
    )
    method: PrefilterMethod | None = Field(
        default=None,
        description="What ranks the documents before the cut: static (static token embeddings, "
        "cheapest semantic), bm25 (over the request's documents), client (each document's "
        "own score: when the prefilter runs, every document must be an object with a score, "
        "else invalid_request), "
        "bi-encoder (transformer embeddings; cheap only for documents seen before), or "
        "static+bm25 (reciprocal-rank fusion of the two); absent: the worker's default.",
    )


class RerankRequest(BaseModel):
    """A request to rank documents by relevance to a query with a cross-encoder.

    Unknown fields are rejected, and types are strict: a number is not a string, and only
    JSON true/false are booleans.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    request_id: RequestId = Field(
        description="Caller-chosen id, 1-128 characters; the key of the response message "
        "and its correlation id."
    )
    query: NonEmptyUnicodeText = Field(
        description="The query, non-empty. Longer than max_query_chars (default "
        f"{DEFAULT_MAX_QUERY_CHARS}) is rejected with too_large."
    )
    # Before documents: pydantic validates fields in this order, and how the documents are
    # read depends on it (see _documents_by_rank_fields).
    rank_fields: RankFields | None = Field(
        default=None,
        description="Names of document fields to rank by, at least one, each once. Given: every "
        "document is an object with any fields, and its scored text is the named fields as "
        '"name: value" lines in this order (title: Kafka\\ntext: A log.); each named field must be '
        "a string in every document. id and score keep their meanings. Absent: documents are "
        "strings or {id, text, score}.",
    )
    # With rank_fields the items are FieldedDocuments instead (_documents_by_rank_fields).
    documents: list[DocumentInput] = Field(
        min_length=1,
        description="The documents to rank: without rank_fields each a string or an object "
        "{id, text, score}; with rank_fields each an object holding the named fields. More than "
        f"max_documents (default {DEFAULT_MAX_DOCUMENTS}) is rejected with too_large, a scored "
        f"text longer than max_document_chars (default {DEFAULT_MAX_DOCUMENT_CHARS}) too.",
    )
    top_n: PositiveJsonInteger | None = Field(
        default=None,
        description="Return only the best top_n results; absent: all. May exceed the number "
        "of documents.",
    )
    return_documents: bool = Field(
        default=False, description="Include each document's text in its result."
    )
    raw_scores: bool = Field(
        default=False,
        description="false: relevance_score is the cross-encoder's score through the model's own "
        "activation, as sentence-transformers' CrossEncoder.predict gives it (a sigmoid, in [0, 1], "
        "unless the model's config names another: Identity gives the logit); true: the raw score "
        "(the logit; for a two-logit head or a yes/no decoder, the margin).",
    )
    model: NonEmptyUnicodeText | None = Field(
        default=None,
        description="Which cross-encoder to use; absent: the worker's default. A model the "
        "worker does not serve is rejected with unknown_model.",
    )
    prefilter: PrefilterOptions | None = Field(
        default=None, description="Prefilter options; absent: the worker decides."
    )
    deadline_ms: NonNegativeJsonInteger | None = Field(
        default=None,
        description="Unix epoch milliseconds after which no answer is useful; the worker "
        "answers deadline_exceeded instead of scoring after it.",
    )
    priority: Priority = Field(
        default=0,
        description=f"Among the requests a worker holds, one with a higher priority has its pairs "
        f"scored first (-{PRIORITY_BOUND} to {PRIORITY_BOUND}; default 0). Among equal priorities "
        "the worker's fair order decides: the least remaining work first, and a request that has "
        "waited long gains on newer ones.",
    )
    reply_to: KafkaTopicName | None = Field(
        default=None,
        description="Topic to send the response to instead of the default response topic; "
        "honoured only when it starts with the worker's allowed prefix.",
    )
    max_chunks_per_doc: PositiveJsonInteger | None = Field(
        default=None,
        description="A document longer than the room beside the query is split into consecutive "
        "chunks (each starting at a word start, as many tokens as fit), at most this many; each "
        "is scored with the query and the document takes its best chunk's score. 1 truncates. "
        f"Absent: the worker's RERANK_MAX_CHUNKS_PER_DOC (default {DEFAULT_MAX_CHUNKS_PER_DOC}).",
    )
    chunk_overlap_tokens: NonNegativeJsonInteger | None = Field(
        default=None,
        description="Tokens a chunk shares with the one before it. Absent: the worker's "
        f"RERANK_CHUNK_OVERLAP_TOKENS (default {DEFAULT_CHUNK_OVERLAP_TOKENS}).",
    )
    truncation_direction: TruncationDirection | None = Field(
        default=None,
        description="Which end of a document too long for the model is kept: right keeps its "
        "start, left its end. Absent: the worker's RERANK_TRUNCATION_DIRECTION (default "
        f"{DEFAULT_TRUNCATION_DIRECTION}).",
    )
    instruction: NonEmptyUnicodeText | None = Field(
        default=None,
        description="The task instruction of a decoder reranker's prompt (Qwen3-Reranker "
        "style); absent: the model's own. A cross-encoder has no place for one: "
        "invalid_request.",
    )

    # The input type puts FieldedDocument among the JSON Schema's $defs (see
    # __get_pydantic_json_schema__, which splits the two forms by rank_fields).
    @field_validator(
        "documents",
        mode="wrap",
        json_schema_input_type=Annotated[list[DocumentInput | FieldedDocument], Field(min_length=1)],
    )
    @classmethod
    def _documents_by_rank_fields(
        cls, value: Any, plain: ValidatorFunctionWrapHandler, info: ValidationInfo
    ) -> list[Any]:
        if "rank_fields" not in info.data:
            # rank_fields is invalid (its error says so), so nothing says how to read the
            # documents; checking them either way would add errors that may not apply.
            return value
        rank_fields = info.data["rank_fields"]
        if rank_fields is None:
            return plain(value)
        return _fielded_documents(value, rank_fields)

    @field_serializer("documents", mode="wrap")
    def _documents_as_sent(self, documents: list[Any], plain: SerializerFunctionWrapHandler) -> Any:
        if self.rank_fields is None:
            return plain(documents)
        # As sent: encode's exclude_none must not drop a document's null fields.
        return [document.as_sent() for document in documents]

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        # JSON Schema's if/then/else says what _documents_by_rank_fields does: the form of the
        # documents follows rank_fields. (That every document holds the named fields as
        # strings, JSON Schema cannot say: it cannot read one value's content as names.)
        schema = handler.resolve_ref_schema(handler(core_schema))
        documents = schema["properties"]["documents"]
        plain_items, fielded_items = documents.pop("items")["anyOf"]
        schema["if"] = {
            "properties": {"rank_fields": {"not": {"type": "null"}}},
            "required": ["rank_fields"],
        }
        schema["then"] = {"properties": {"documents": {"items": fielded_items}}}
        schema["else"] = {"properties": {"documents": {"items": plain_items}}}
        return schema

    def texts(self) -> list[str]:
        """The scored texts, in request order (the order ``index`` refers to): each
        document's text, or with rank_fields its named fields joined (``rank_text``)."""
        if self.rank_fields is not None:
            return [rank_text(d, self.rank_fields) for d in self.documents]
        return [d if isinstance(d, str) else d.text for d in self.documents]

    def scores(self) -> list[float | None]:
        """The documents' own scores, in request order; None where a document has none."""
        return [None if isinstance(d, str) else d.score for d in self.documents]

    def ids(self) -> list[str | None]:
        """The document ids, in request order; None for documents given as bare strings
        or without an id."""
        return [None if isinstance(d, str) else d.id for d in self.documents]
