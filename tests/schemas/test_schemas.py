"""schemas: parse_request's error paths and messages, encode, and the response models."""

from __future__ import annotations

import json
import time
from typing import Any
from unittest import mock

import pytest
from pydantic import ValidationError

import schemas
from engines import EngineConfig
from schemas import (
    BestChunk,
    Document,
    FieldedDocument,
    DocumentText,
    ErrorCode,
    ErrorDetail,
    ErrorResponse,
    PrefilterOptions,
    RankedResult,
    RequestError,
    RequestLimits,
    RerankRequest,
    RerankResponse,
    ResponseMeta,
    encode,
    parse_request,
    parse_response,
    rank_results,
)

DROP = object()  # an override that removes the field


def request_dict(**overrides: Any) -> dict[str, Any]:
    """A valid request with some fields replaced (or dropped, with DROP)."""
    payload: dict[str, Any] = {
        "request_id": "r-1",
        "query": "what is a cross-encoder?",
        "documents": ["a bi-encoder embeds separately", {"id": "d2", "text": "it reads both"}],
    }
    payload.update(overrides)
    return {k: v for k, v in payload.items() if v is not DROP}


def as_bytes(payload: Any) -> bytes:
    return json.dumps(payload).encode("utf-8")


def rejection(raw: bytes | None, **kwargs: Any) -> RequestError:
    with pytest.raises(RequestError) as caught:
        parse_request(raw, **kwargs)
    return caught.value


# --- accepted requests -------------------------------------------------------------------


def test_minimal_request_gets_the_documented_defaults() -> None:
    request = parse_request(as_bytes(request_dict()))
    assert request.request_id == "r-1"
    assert request.top_n is None
    assert request.return_documents is False
    assert request.raw_scores is False
    assert request.model is None
    assert request.prefilter is None
    assert request.deadline_ms is None
    assert request.reply_to is None


@pytest.mark.parametrize("written", ["2.0", "2e0", "0.2e1", "2.000"])
def test_integers_written_with_a_zero_fraction_are_integers_as_json_schema_says(written: str) -> None:
    # JSON Schema's "integer" includes 2.0, so a client that validates with our schema may
    # send it; the worker takes it as the integer 2 and writes it back as 2.
    raw = (
        '{"request_id": "r", "query": "q", "documents": ["d"], "top_n": %s, '
        '"deadline_ms": %s, "prefilter": {"keep": %s}}' % (written, written, written)
    ).encode()
    request = parse_request(raw)
    assert (request.top_n, request.deadline_ms, request.prefilter.keep) == (2, 2, 2)
    assert all(type(v) is int for v in (request.top_n, request.deadline_ms, request.prefilter.keep))
    assert b'"top_n":2,' in encode(request)


def test_texts_and_ids_follow_request_order_for_both_document_forms() -> None:
    request = parse_request(
        as_bytes(request_dict(documents=["plain", {"id": "x", "text": "with id"}, {"text": "no id"}]))
    )
    assert request.texts() == ["plain", "with id", "no id"]
    assert request.ids() == [None, "x", None]
    assert request.scores() == [None, None, None]
    assert isinstance(request.documents[1], Document)


def test_document_scores_and_the_prefilter_method() -> None:
    request = parse_request(as_bytes(request_dict(
        documents=["plain", {"text": "a", "score": 3}, {"id": "b", "text": "b", "score": -0.25}, {"text": "c"}],
        prefilter={"method": "client", "keep": 2},
    )))
    assert request.scores() == [None, 3.0, -0.25, None]  # an integer is a number too
    assert request.prefilter == PrefilterOptions(keep=2, method="client")
    for method in ("bi-encoder", "static", "bm25", "client", "static+bm25"):
        assert parse_request(as_bytes(request_dict(prefilter={"method": method}))).prefilter.method == method
    # A score too large for a double, or written as 1e999 (JSON has no infinity), is refused.
    error = rejection(b'{"request_id": "r", "query": "q", "documents": [{"text": "t", "score": 1e999}]}')
    assert error.code is ErrorCode.INVALID_REQUEST and "documents[0].score" in error.message
    error = rejection(as_bytes(request_dict(documents=[{"text": "t", "score": 10**400}])))
    assert "documents[0].score: Input should be a valid number" in error.message


def test_structured_documents_are_scored_by_their_rank_fields_joined() -> None:
    request = parse_request(as_bytes(request_dict(
        rank_fields=["title", "text"],
        documents=[
            {"id": "k", "title": "Kafka", "text": "A log.", "url": "https://kafka.apache.org", "year": 2011},
            {"text": "", "title": "", "score": 2, "meta": {"tags": ["a", None]}},
        ],
    )))
    assert request.texts() == ["title: Kafka\ntext: A log.", "title: \ntext: "]
    assert request.ids() == ["k", None]
    assert request.scores() == [None, 2.0]
    assert all(isinstance(d, FieldedDocument) for d in request.documents)
    # the object as sent, null fields included, and back through encode unchanged
    assert request.documents[1].as_sent() == {"score": 2.0, "text": "", "title": "", "meta": {"tags": ["a", None]}}
    assert parse_request(encode(request)) == request
    assert b'"tags":["a",null]' in encode(request)


def test_rank_fields_may_name_any_field_even_id_or_a_models_method() -> None:
    request = parse_request(as_bytes(request_dict(
        rank_fields=["id", "copy", "model_dump"], documents=[{"id": "7", "copy": "c", "model_dump": "m"}],
    )))
    assert request.texts() == ["id: 7\ncopy: c\nmodel_dump: m"]
    assert request.ids() == ["7"]


def test_the_document_limit_counts_the_scored_text_of_a_structured_document() -> None:
    limits = RequestLimits(max_document_chars=20)
    short = {"title": "a" * 3, "body": "b" * 3, "ignored": "x" * 1000}  # "title: aaa\nbody: bbb" is 20
    assert parse_request(as_bytes(request_dict(rank_fields=["title", "body"], documents=[short])), limits)
    error = rejection(as_bytes(request_dict(rank_fields=["title", "body"], documents=[short, {**short, "body": "bbbb"}])),
                      limits=limits)
    assert error.code is ErrorCode.TOO_LARGE
    assert error.message == "documents[1] (its rank_fields joined) has 21 characters; the limit is 20 (max_document_chars)"


def test_chunking_and_instruction_options_read_as_sent_and_default_to_none() -> None:
    request = parse_request(as_bytes(request_dict(
        max_chunks_per_doc=4.0, chunk_overlap_tokens=0, truncation_direction="left", instruction="Find answers",
    )))
    assert (request.max_chunks_per_doc, request.chunk_overlap_tokens) == (4, 0)
    assert type(request.max_chunks_per_doc) is int
    assert (request.truncation_direction, request.instruction) == ("left", "Find answers")
    default = parse_request(as_bytes(request_dict()))
    assert (default.rank_fields, default.max_chunks_per_doc, default.chunk_overlap_tokens,
            default.truncation_direction, default.instruction) == (None,) * 5


def test_the_defaults_the_descriptions_quote_are_the_engines() -> None:
    config = EngineConfig()
    fields = RerankRequest.model_fields
    assert f"(default {config.max_chunks_per_doc})" in (fields["max_chunks_per_doc"].description or "")
    assert f"(default {config.chunk_overlap_tokens})" in (fields["chunk_overlap_tokens"].description or "")
    assert f"(default {config.truncation_direction})" in (fields["truncation_direction"].description or "")


def test_every_field_set() -> None:
    payload = request_dict(
        top_n=10**30,  # more than there are documents: means "all"
        return_documents=True,
        raw_scores=True,
        model="ms-marco-MiniLM-L-6-v2",
        prefilter={"enabled": None, "keep": 200},
        deadline_ms=0,
        reply_to="rerank.replies.team-a_1",
    )
    request = parse_request(as_bytes(payload), served_models={"ms-marco-MiniLM-L-6-v2"})
    assert request.prefilter == PrefilterOptions(enabled=None, keep=200)
    assert request.top_n == 10**30
    assert request.reply_to == "rerank.replies.team-a_1"


@pytest.mark.parametrize("topic", ["a", "...", "x" * 249, "A.b_c-9"])
def test_legal_kafka_topic_names_are_accepted_as_reply_to(topic: str) -> None:
    assert parse_request(as_bytes(request_dict(reply_to=topic))).reply_to == topic


@pytest.mark.parametrize(
    "text",
    ["", "nul\x00inside", "\x01\x1f\x7f control", "tab\tnewline\n", "é ü 中文 😀", "\u2028\u2029"],
)
def test_any_unicode_text_is_a_document_including_nul_and_control_characters(text: str) -> None:
    raw = as_bytes(request_dict(query="q" + text, documents=[text, {"text": text}]))
    request = parse_request(raw)
    assert request.texts() == [text, text]
    assert request.query == "q" + text
    assert parse_request(encode(request)) == request


def test_surrogate_pair_escapes_are_one_character() -> None:
    raw = b'{"request_id": "r", "query": "\\ud83d\\ude00", "documents": ["\\ud83d\\ude00"]}'
    assert parse_request(raw).query == "😀"


def test_byte_like_values_are_accepted() -> None:
    raw = as_bytes(request_dict())
    assert parse_request(bytearray(raw)) == parse_request(memoryview(raw)) == parse_request(raw)


# --- broken messages: invalid_request with no request_id (dead letters) -------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"\xff\xfe{}", "not valid UTF-8"),
        ('{"request_id": "caf\u00e9"}'.encode("latin-1"), "not valid UTF-8"),
        # json.loads(bytes) would happily decode this; the contract says UTF-8.
        ('{"request_id": "r"}'.encode("utf-16"), "not valid UTF-8"),
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b'{"request_id": "r"} trailing', "not valid JSON"),
        (b"{'request_id': 'r'}", "not valid JSON"),
        (b'{"request_id": "r", "top_n": NaN}', "NaN is not a JSON number"),
        (b'{"request_id": "r", "top_n": Infinity}', "Infinity is not a JSON number"),
        (b'{"request_id": "r", "top_n": -Infinity}', "-Infinity is not a JSON number"),
        (b'{"request_id": "r", "top_n": ' + b"9" * 5000 + b"}", "not usable JSON"),
        (b"[]", "should be a JSON object, got array"),
        (b'"request"', "should be a JSON object, got string"),
        (b"42", "should be a JSON object, got number"),
        (b"null", "should be a JSON object, got null"),
        (None, "no value"),
    ],
)
def test_unreadable_messages_are_invalid_without_request_id(raw: bytes | None, expected: str) -> None:
    error = rejection(raw)
    assert error.code is ErrorCode.INVALID_REQUEST
    assert error.request_id is None
    assert expected in error.message


@pytest.mark.parametrize("opening", [b"[", b'{"a":', b'{"request_id": "r", "documents": ['])
def test_deep_nesting_is_rejected_not_crashed_on(opening: bytes) -> None:
    error = rejection(opening * 200_000)
    assert error.code is ErrorCode.INVALID_REQUEST
    assert error.request_id is None
    assert "nested too deeply" in error.message


def test_nesting_json_can_parse_is_a_schema_error_under_the_request_id() -> None:
    nested: Any = "leaf"
    for _ in range(500):
        nested = [nested]
    error = rejection(as_bytes(request_dict(documents=[nested], extra=nested)))
    assert error.code is ErrorCode.INVALID_REQUEST
    assert error.request_id == "r-1"
    assert "documents[0]: Input should be a string or an object" in error.message
    assert "unknown field 'extra'" in error.message


def test_parse_request_rejects_non_bytes_as_a_programming_error() -> None:
    with pytest.raises(TypeError):
        parse_request(12345)  # type: ignore[arg-type]


# --- request_id recovery -----------------------------------------------------------------


@pytest.mark.parametrize("request_id", ["r", "x" * 128, "é😀", "with space\x00nul"])
def test_a_valid_request_id_is_recovered_when_other_fields_are_bad(request_id: str) -> None:
    error = rejection(as_bytes(request_dict(request_id=request_id, top_n="5", unknown=1)))
    assert error.code is ErrorCode.INVALID_REQUEST
    assert error.request_id == request_id


@pytest.mark.parametrize("request_id", [DROP, None, 5, "", "x" * 129, ["r"], True])
def test_an_invalid_request_id_is_not_recovered(request_id: Any) -> None:
    error = rejection(as_bytes(request_dict(request_id=request_id)))
    assert error.code is ErrorCode.INVALID_REQUEST
    assert error.request_id is None
    assert "request_id" in error.message


def test_an_unpaired_surrogate_request_id_is_not_recovered() -> None:
    # It could not be written back out as a UTF-8 key.
    error = rejection(b'{"request_id": "r\\ud800", "query": "q", "documents": ["d"]}')
    assert error.request_id is None
    assert error.message == (
        "request_id: String is not valid Unicode: it contains an unpaired UTF-16 surrogate"
    )


# --- too_large ---------------------------------------------------------------------------


def test_too_many_documents_names_the_count_and_the_limit() -> None:
    error = rejection(as_bytes(request_dict(documents=["d"] * 2500)))
    assert error.code is ErrorCode.TOO_LARGE
    assert error.request_id == "r-1"
    assert error.message == "documents has 2500 items; the limit is 2000 (max_documents)"


def test_exactly_max_documents_is_accepted() -> None:
    assert len(parse_request(as_bytes(request_dict(documents=["d"] * 2000))).documents) == 2000
    limits = RequestLimits(max_documents=3)
    assert len(parse_request(as_bytes(request_dict(documents=["d"] * 3)), limits).documents) == 3
    error = rejection(as_bytes(request_dict(documents=["d"] * 4)), limits=limits)
    assert error.message == "documents has 4 items; the limit is 3 (max_documents)"


def test_100000_documents_are_rejected_fast_without_validating_them() -> None:
    raw = as_bytes(request_dict(documents=[{"id": str(i), "text": f"document {i}"} for i in range(100_000)]))
    with mock.patch.object(RerankRequest, "model_validate", side_effect=AssertionError("validated")):
        started = time.perf_counter()
        error = rejection(raw)
        elapsed = time.perf_counter() - started
    assert error.code is ErrorCode.TOO_LARGE
    assert error.message == "documents has 100000 items; the limit is 2000 (max_documents)"
    assert elapsed < 1.0  # json.loads alone; validating them would take several times longer


def test_too_large_is_reported_before_schema_errors() -> None:
    error = rejection(as_bytes(request_dict(documents=[5] * 2001, top_n="all", foo=1)))
    assert error.code is ErrorCode.TOO_LARGE
    assert error.request_id == "r-1"


def test_a_too_long_query_names_its_length_and_the_limit() -> None:
    error = rejection(as_bytes(request_dict(query="q" * 10_001)))
    assert error.code is ErrorCode.TOO_LARGE
    assert error.message == "query has 10001 characters; the limit is 10000 (max_query_chars)"
    assert parse_request(as_bytes(request_dict(query="q" * 10_000))).query == "q" * 10_000


def test_a_too_long_document_names_its_path_and_the_limit() -> None:
    documents = ["short", {"id": "big", "text": "t" * 200_001}, "s" * 300_000]
    error = rejection(as_bytes(request_dict(documents=documents)))
    assert error.code is ErrorCode.TOO_LARGE
    assert error.message == (
        "documents[1].text has 200001 characters; the limit is 200000 (max_document_chars); "
        "1 more is too long"
    )
    error = rejection(as_bytes(request_dict(documents=["short", "s" * 200_001])))
    assert error.message == "documents[1] has 200001 characters; the limit is 200000 (max_document_chars)"


def test_limits_count_characters_not_bytes() -> None:
    limits = RequestLimits(max_query_chars=4, max_document_chars=4)
    request = parse_request(as_bytes(request_dict(query="éééé", documents=["😀😀😀😀"])), limits)
    assert request.texts() == ["😀😀😀😀"]


def test_none_disables_the_text_limits() -> None:
    limits = RequestLimits(max_query_chars=None, max_document_chars=None)
    request = parse_request(as_bytes(request_dict(query="q" * 20_000, documents=["d" * 300_000])), limits)
    assert len(request.texts()[0]) == 300_000


def test_default_limits() -> None:
    assert RequestLimits() == RequestLimits(
        max_documents=2000, max_query_chars=10_000, max_document_chars=200_000
    )


@pytest.mark.parametrize(
    "kwargs", [{"max_documents": 0}, {"max_query_chars": 0}, {"max_document_chars": -1}]
)
def test_limits_must_be_positive(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        RequestLimits(**kwargs)


# --- schema errors: invalid_request naming the field -------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"request_id": 5}, "request_id: Input should be a valid string (got number)"),
        ({"request_id": "x" * 129}, "request_id: String should have at most 128 characters"),
        ({"request_id": DROP}, "missing required field 'request_id'"),
        ({"query": DROP}, "missing required field 'query'"),
        ({"query": ""}, "query: String should have at least 1 character"),
        ({"query": 5}, "query: Input should be a valid string (got number)"),
        ({"query": ["q"]}, "query: Input should be a valid string (got array)"),
        ({"documents": DROP}, "missing required field 'documents'"),
        ({"documents": []}, "documents: should have at least 1 item, got 0"),
        ({"documents": "one document"}, "documents: Input should be an array (got string)"),
        (
            {"documents": ["a", 5]},
            "documents[1]: Input should be a string or an object with 'text' and optional 'id' "
            "(got number)",
        ),
        ({"documents": ["a", None]}, "documents[1]: Input should be a string or an object"),
        (
            {"documents": ["a", "b", "c", {"id": "d", "text": 4}]},
            "documents[3].text: Input should be a valid string (got number)",
        ),
        ({"documents": [{"id": 7, "text": "t"}]}, "documents[0].id: Input should be a valid string"),
        ({"documents": [{"id": "d"}]}, "documents[0]: missing required field 'text'"),
        (
            {"documents": [{"text": "t", "rank": 1}]},
            "documents[0]: unknown field 'rank' (allowed: id, text, score)",
        ),
        ({"documents": [{"text": "t", "score": "0.5"}]}, "documents[0].score: Input should be a valid number (got string)"),
        ({"documents": [{"text": "t", "score": True}]}, "documents[0].score: Input should be a valid number (got boolean)"),
        ({"top_n": 0}, "top_n: Input should be greater than or equal to 1"),
        ({"top_n": "3"}, "top_n: Input should be a valid integer (got string)"),
        ({"top_n": True}, "top_n: Input should be a valid integer (got boolean)"),
        ({"top_n": 2.5}, "top_n: Input should be a valid integer (got number)"),
        ({"top_n": 0.0}, "top_n: Input should be greater than or equal to 1"),
        ({"prefilter": {"keep": 1.5}}, "prefilter.keep: Input should be a valid integer (got number)"),
        ({"deadline_ms": -1.0}, "deadline_ms: Input should be greater than or equal to 0"),
        ({"return_documents": 1}, "return_documents: Input should be a valid boolean (got number)"),
        ({"return_documents": "true"}, "return_documents: Input should be a valid boolean (got string)"),
        ({"raw_scores": None}, "raw_scores: Input should be a valid boolean (got null)"),
        ({"model": ""}, "model: String should have at least 1 character"),
        ({"model": 3}, "model: Input should be a valid string (got number)"),
        ({"prefilter": True}, "prefilter: Input should be an object (got boolean)"),
        ({"prefilter": {"enabled": "auto"}}, "prefilter.enabled: Input should be a valid boolean"),
        ({"prefilter": {"enabled": 1}}, "prefilter.enabled: Input should be a valid boolean"),
        ({"prefilter": {"keep": 0}}, "prefilter.keep: Input should be greater than or equal to 1"),
        ({"prefilter": {"keep": "10"}}, "prefilter.keep: Input should be a valid integer"),
        ({"prefilter": {"kep": 10}}, "prefilter: unknown field 'kep' (allowed: enabled, keep, method)"),
        (
            {"prefilter": {"method": "tfidf"}},
            "prefilter.method: Input should be 'bi-encoder', 'static', 'bm25', 'client' or 'static+bm25'",
        ),
        ({"prefilter": {"method": None, "keep": 0}}, "prefilter.keep: Input should be greater than or equal to 1"),
        ({"deadline_ms": -1}, "deadline_ms: Input should be greater than or equal to 0"),
        ({"deadline_ms": "1700000000000"}, "deadline_ms: Input should be a valid integer (got string)"),
        ({"deadline_ms": 1.7e12 + 0.5}, "deadline_ms: Input should be a valid integer (got number)"),
        ({"priority": 1001}, "priority: Input should be less than or equal to 1000"),
        ({"priority": -1001}, "priority: Input should be greater than or equal to -1000"),
        ({"priority": 10**100}, "priority: Input should be less than or equal to 1000"),
        ({"priority": 1e300}, "priority: Input should be less than or equal to 1000"),
        ({"priority": "5"}, "priority: Input should be a valid integer (got string)"),
        ({"priority": True}, "priority: Input should be a valid integer (got boolean)"),
        ({"priority": 2.5}, "priority: Input should be a valid integer (got number)"),
        ({"priority": None}, "priority: Input should be a valid integer (got null)"),
        ({"reply_to": 5}, "reply_to: Input should be a valid string (got number)"),
        ({"reply_to": ""}, "reply_to: String should have at least 1 character"),
        ({"reply_to": "x" * 250}, "reply_to: String should have at most 249 characters"),
        ({"reply_to": "has space"}, "reply_to: String should be a legal Kafka topic name"),
        ({"reply_to": "topic\n"}, "reply_to: String should be a legal Kafka topic name"),
        ({"reply_to": "tøpic"}, "reply_to: String should be a legal Kafka topic name"),
        ({"reply_to": "."}, "reply_to: String should be a legal Kafka topic name"),
        ({"reply_to": ".."}, "reply_to: String should be a legal Kafka topic name"),
        (
            {"documents": [{"title": "Kafka", "text": "t"}]},
            "documents[0]: unknown field 'title' (allowed: id, text, score): other fields need rank_fields",
        ),
        ({"rank_fields": []}, "rank_fields: should have at least 1 item, got 0"),
        ({"rank_fields": "title"}, "rank_fields: Input should be an array (got string)"),
        ({"rank_fields": [""]}, "rank_fields[0]: String should have at least 1 character"),
        ({"rank_fields": ["title", 3]}, "rank_fields[1]: Input should be a valid string (got number)"),
        ({"rank_fields": ["title", "text", "title"]}, "rank_fields: should name each field once"),
        (
            {"rank_fields": ["title"], "documents": [{"title": "t"}, "a bare string"]},
            "documents[1]: Input should be an object: with rank_fields, a document's scored text is made of "
            "its named fields (got string)",
        ),
        (
            {"rank_fields": ["title", "text"], "documents": [{"title": "t", "text": "u"}, {"title": "t"}]},
            "documents[1]: field 'text', named in rank_fields, is missing",
        ),
        (
            {"rank_fields": ["title"], "documents": [{"title": ["t"]}]},
            "documents[0]: field 'title', named in rank_fields, should be a string (got array)",
        ),
        (
            {"rank_fields": ["title"], "documents": [{"title": "t", "id": 3}]},
            "documents[0].id: Input should be a valid string (got number)",
        ),
        ({"rank_fields": ["title"], "documents": []}, "documents: should have at least 1 item, got 0"),
        ({"max_chunks_per_doc": 0}, "max_chunks_per_doc: Input should be greater than or equal to 1"),
        ({"max_chunks_per_doc": "4"}, "max_chunks_per_doc: Input should be a valid integer (got string)"),
        ({"chunk_overlap_tokens": -1}, "chunk_overlap_tokens: Input should be greater than or equal to 0"),
        ({"chunk_overlap_tokens": 0.5}, "chunk_overlap_tokens: Input should be a valid integer (got number)"),
        ({"truncation_direction": "both"}, "truncation_direction: Input should be 'right' or 'left'"),
        ({"truncation_direction": 1}, "truncation_direction: Input should be 'right' or 'left'"),
        ({"instruction": ""}, "instruction: String should have at least 1 character"),
        ({"instruction": ["judge"]}, "instruction: Input should be a valid string (got array)"),
        ({"foo": 1}, "unknown field 'foo' (allowed: request_id, query, rank_fields, documents, top_n,"),
        ({"status": "ok"}, "unknown field 'status'"),
    ],
)
def test_schema_errors_name_the_field(overrides: dict[str, Any], expected: str) -> None:
    error = rejection(as_bytes(request_dict(**overrides)))
    assert error.code is ErrorCode.INVALID_REQUEST
    assert expected in error.message
    assert error.request_id == ("r-1" if "request_id" not in overrides else None)


def test_unpaired_surrogates_are_rejected_with_the_field_path() -> None:
    raw = b'{"request_id": "r", "query": "ok", "documents": ["fine", {"text": "bad \\udc00"}]}'
    error = rejection(raw)
    assert error.code is ErrorCode.INVALID_REQUEST
    assert error.request_id == "r"
    assert error.message == (
        "documents[1].text: String is not valid Unicode: it contains an unpaired UTF-16 "
        "surrogate at position 4"
    )


@pytest.mark.parametrize(
    ("fragment", "path"),
    [
        ('"query": "\\ud800", "documents": ["d"]', "query"),
        ('"query": "q", "documents": ["\\udfff"]', "documents[0]"),
        ('"query": "q", "documents": [{"id": "\\ud800x", "text": "t"}]', "documents[0].id"),
        ('"query": "q", "documents": ["d"], "model": "m\\ud800"', "model"),
        ('"query": "q", "documents": ["d"], "reply_to": "t\\ud800"', "reply_to"),
    ],
)
def test_no_string_field_accepts_what_encode_could_not_write(fragment: str, path: str) -> None:
    error = rejection(('{"request_id": "r", ' + fragment + "}").encode())
    assert error.code is ErrorCode.INVALID_REQUEST
    assert error.message.startswith(f"{path}: ")


def test_every_problem_is_listed_up_to_a_bound() -> None:
    error = rejection(as_bytes(request_dict(documents=[1, 2, 3, 4, 5, 6, 7], query=3)))
    problems = error.message.split("; ")
    assert problems[0] == "query: Input should be a valid string (got number)"
    assert problems[1].startswith("documents[0]: ")
    assert problems[-1] == "and 3 more problems"
    assert len(problems) == 6


def test_a_huge_unknown_field_name_is_shortened_in_the_message() -> None:
    error = rejection(as_bytes(request_dict(**{"k" * 100_000: 1})))
    assert "unknown field 'kkkk" in error.message
    assert len(error.message) < 400


def test_messages_never_echo_document_text() -> None:
    secret = "confidential " * 50
    error = rejection(as_bytes(request_dict(documents=[{"text": secret, "oops": secret}], top_n=secret)))
    assert "confidential" not in error.message


# --- unknown_model -----------------------------------------------------------------------


def test_a_model_not_served_is_unknown_model_naming_the_served_ones() -> None:
    error = rejection(as_bytes(request_dict(model="bge-reranker")), served_models=["minilm", "electra"])
    assert error.code is ErrorCode.UNKNOWN_MODEL
    assert error.request_id == "r-1"
    assert error.message == "model 'bge-reranker' is not served here; served models: 'electra', 'minilm'"


def test_model_is_only_checked_when_both_the_request_and_the_caller_name_models() -> None:
    assert parse_request(as_bytes(request_dict()), served_models=["minilm"]).model is None
    assert parse_request(as_bytes(request_dict(model="anything"))).model == "anything"
    assert parse_request(as_bytes(request_dict(model="minilm")), served_models={"minilm"}).model == "minilm"
    assert rejection(as_bytes(request_dict(model="m")), served_models=[]).message.endswith(
        "served models: none"
    )


def test_schema_errors_come_before_unknown_model() -> None:
    error = rejection(as_bytes(request_dict(model="bge", top_n=0)), served_models=["minilm"])
    assert error.code is ErrorCode.INVALID_REQUEST


# --- RequestError and encode -------------------------------------------------------------


def test_request_error_becomes_an_error_response() -> None:
    error = rejection(as_bytes(request_dict(top_n=0)))
    assert str(error).startswith("invalid_request: top_n:")
    response = error.to_response()
    assert response == ErrorResponse(
        request_id="r-1", error=ErrorDetail(code=ErrorCode.INVALID_REQUEST, message=error.message)
    )
    assert json.loads(encode(response)) == {
        "request_id": "r-1",
        "status": "error",
        "error": {"code": "invalid_request", "message": error.message},
    }


def test_dead_letter_error_encodes_request_id_as_null() -> None:
    encoded = encode(rejection(b"\x00\xff").to_response())
    assert json.loads(encoded)["request_id"] is None
    assert b'"request_id":null' in encoded


def _response(**overrides: Any) -> RerankResponse:
    fields: dict[str, Any] = {
        "request_id": "r-1",
        "model": "minilm",
        "engine": "onnxruntime",
        "results": [
            RankedResult(index=1, id="d2", relevance_score=0.9, document=DocumentText(text="é")),
            RankedResult(index=0, id=None, relevance_score=0.1),
        ],
        "meta": ResponseMeta(
            documents=2,
            scored_by_cross_encoder=2,
            pairs_scored=2,
            prefiltered=False,
            queue_ms=1.5,
            inference_ms=3.25,
            total_ms=5.0,
            worker="worker-0",
        ),
    }
    fields.update(overrides)
    return RerankResponse(**fields)


def test_encode_response_is_compact_utf8_with_document_only_when_asked() -> None:
    assert encode(_response()) == (
        '{"request_id":"r-1","status":"ok","model":"minilm","engine":"onnxruntime","results":['
        '{"index":1,"id":"d2","relevance_score":0.9,"stage":"cross_encoder","document":{"text":"é"}},'
        '{"index":0,"id":null,"relevance_score":0.1,"stage":"cross_encoder"}],'
        '"meta":{"documents":2,"scored_by_cross_encoder":2,"pairs_scored":2,"prefiltered":false,"queue_ms":1.5,'
        '"inference_ms":3.25,"total_ms":5.0,"worker":"worker-0"}}'
    ).encode("utf-8")


def test_a_result_carries_its_best_chunk_and_a_structured_echo_as_given() -> None:
    chunked = RankedResult(index=0, id="a", relevance_score=0.5, chunk=BestChunk(index=2, start=10, end=25, chunks=3),
                           document={"id": "a", "title": "Kafka", "note": None})
    encoded = encode(_response(results=[chunked], meta=_response().meta.model_copy(update={"pairs_scored": 3})))
    sent = json.loads(encoded)
    assert sent["results"][0]["chunk"] == {"index": 2, "start": 10, "end": 25, "chunks": 3}
    assert sent["results"][0]["document"] == {"id": "a", "title": "Kafka", "note": None}
    assert sent["meta"]["pairs_scored"] == 3
    assert parse_response(encoded).results[0].chunk == chunked.chunk


@pytest.mark.parametrize(("chunk", "expected"), [
    ({"index": 0, "start": 5, "end": 4, "chunks": 1}, "end 4 is before its start 5"),
    ({"index": 3, "start": 0, "end": 4, "chunks": 3}, "index 3 is not among its 3 chunks"),
    ({"index": 0, "start": 0, "end": 4, "chunks": 0}, "greater than or equal to 1"),
    ({"index": -1, "start": 0, "end": 4, "chunks": 1}, "greater than or equal to 0"),
])
def test_a_best_chunk_is_a_span_among_its_chunks(chunk: dict[str, int], expected: str) -> None:
    with pytest.raises(ValidationError, match=expected):
        BestChunk(**chunk)


def test_encode_request_leaves_out_none_and_round_trips() -> None:
    request = parse_request(as_bytes(request_dict(top_n=3, prefilter={"keep": 5})))
    encoded = encode(request)
    assert b"null" not in encoded
    assert parse_request(encoded) == request


def test_encode_refuses_other_objects() -> None:
    with pytest.raises(TypeError):
        encode({"request_id": "r"})  # type: ignore[arg-type]


def test_parse_response_reads_both_kinds_back() -> None:
    response = _response()
    assert parse_response(encode(response)) == response
    error = rejection(as_bytes(request_dict(top_n=0))).to_response()
    assert parse_response(encode(error)) == error
    with pytest.raises(ValidationError):
        parse_response(b'{"request_id": "r", "status": "maybe"}')


# --- response models ---------------------------------------------------------------------


def test_rank_results_orders_by_stage_then_score_then_index_and_applies_top_n() -> None:
    results = [
        RankedResult(index=0, id=None, relevance_score=0.95, stage="prefilter"),
        RankedResult(index=1, id=None, relevance_score=0.2),
        RankedResult(index=2, id=None, relevance_score=0.7),
        RankedResult(index=3, id=None, relevance_score=0.2),
        RankedResult(index=4, id=None, relevance_score=0.99, stage="prefilter"),
    ]
    ranked = rank_results(reversed(results))
    assert [r.index for r in ranked] == [2, 1, 3, 4, 0]
    assert [r.index for r in rank_results(results, top_n=2)] == [2, 1]
    meta = _response().meta.model_copy(update={"documents": 5, "prefiltered": True})
    assert _response(results=ranked, meta=meta).results == ranked


def _result(index: int, score: float, stage: str = "cross_encoder") -> RankedResult:
    return RankedResult(index=index, id=None, relevance_score=score, stage=stage)


@pytest.mark.parametrize(
    ("results", "expected"),
    [
        ([_result(0, 0.1), _result(1, 0.9)], r"results\[1\] is out of order"),
        ([_result(1, 0.5), _result(0, 0.5)], r"results\[1\] is out of order"),
        ([_result(0, 0.9, "prefilter"), _result(1, 0.1)], r"results\[1\] is out of order"),
        ([_result(0, 0.9), _result(0, 0.1)], "more than once"),
        ([_result(2, 0.9)], "refer to index 2 but the request had 2"),
    ],
)
def test_response_refuses_results_that_break_the_contract(results: list[RankedResult], expected: str) -> None:
    with pytest.raises(ValidationError, match=expected):
        _response(results=results)


@pytest.mark.parametrize("score", [float("nan"), float("inf"), float("-inf")])
def test_scores_must_be_finite(score: float) -> None:
    with pytest.raises(ValidationError, match="finite"):
        RankedResult(index=0, id=None, relevance_score=score)


def test_response_models_refuse_misspelt_fields() -> None:
    with pytest.raises(ValidationError, match="scored_by_crossencoder"):
        ResponseMeta(
            documents=1,
            scored_by_crossencoder=1,  # type: ignore[call-arg]
            pairs_scored=1,
            prefiltered=False,
            queue_ms=0,
            inference_ms=0,
            total_ms=0,
            worker="w",
        )


def test_response_models_take_numpy_scalars_from_engines() -> None:
    np = pytest.importorskip("numpy")
    result = RankedResult(index=np.int64(3), id=None, relevance_score=np.float32(0.5))
    assert (type(result.index), type(result.relevance_score)) == (int, float)
    assert encode(_response(results=[result], meta=_response().meta.model_copy(update={"documents": 4})))


def test_public_names() -> None:
    assert {code.value for code in ErrorCode} == {
        "invalid_request",
        "too_large",
        "unknown_model",
        "deadline_exceeded",
        "internal",
    }
    for name in schemas.__all__:
        assert getattr(schemas, name) is not None
