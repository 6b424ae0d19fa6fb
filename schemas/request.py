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

import re
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from vocabulary import PrefilterMethod

__all__ = [
    "Document",
    "PrefilterOptions",
    "RerankRequest",
]

# Defaults of schemas.parsing.RequestLimits, kept here because the field descriptions (and
# so the JSON Schemas) quote them.
DEFAULT_MAX_DOCUMENTS = 2000
DEFAULT_MAX_QUERY_CHARS = 10_000
DEFAULT_MAX_DOCUMENT_CHARS = 200_000
REQUEST_ID_MAX_CHARS = 128
TOPIC_NAME_MAX_CHARS = 249


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
    documents: list[DocumentInput] = Field(
        min_length=1,
        description="The documents to rank, each a string or an object {id, text}. More "
        f"than max_documents (default {DEFAULT_MAX_DOCUMENTS}) is rejected with too_large.",
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

    def texts(self) -> list[str]:
        """The document texts, in request order (the order ``index`` refers to)."""
        return [d if isinstance(d, str) else d.text for d in self.documents]

    def scores(self) -> list[float | None]:
        """The documents' own scores, in request order; None where a document has none."""
        return [None if isinstance(d, str) else d.score for d in self.documents]

    def ids(self) -> list[str | None]:
        """The document ids, in request order; None for documents given as bare strings
        or without an id."""
        return [None if isinstance(d, str) else d.id for d in self.documents]
