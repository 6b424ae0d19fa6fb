"""The exported JSON Schemas: up to date, and in agreement with the pydantic models.

"Agreement" means: for a request, jsonschema accepts exactly what parse_request accepts
(size limits aside: they are configuration, not schema); for responses, everything encode
writes is valid. The few differences JSON Schema cannot express are pinned down in
test_known_differences so that nobody is surprised by them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from schemas import (
    BestChunk,
    DocumentText,
    ErrorCode,
    ErrorDetail,
    ErrorResponse,
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
from schemas.export import DEFAULT_OUT_DIR, json_schemas, render, stale_files

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILES = ["rerank-request.schema.json", "rerank-response.schema.json", "rerank-error.schema.json"]
# Only the schema is under test here, so no size limits.
NO_LIMITS = RequestLimits(max_documents=10**9, max_query_chars=None, max_document_chars=None)


def committed_validator(file_name: str) -> Draft202012Validator:
    schema = json.loads((REPO_ROOT / "schemas" / "json" / file_name).read_text(encoding="utf-8"))
    return Draft202012Validator(schema)


REQUEST_SCHEMA = committed_validator("rerank-request.schema.json")
RESPONSE_SCHEMA = committed_validator("rerank-response.schema.json")
ERROR_SCHEMA = committed_validator("rerank-error.schema.json")


def service_refusal(payload: Any) -> str | None:
    """The service's error message for ``payload``; None when it accepts it."""
    try:
        parse_request(json.dumps(payload).encode("utf-8"), NO_LIMITS)
    except RequestError as error:
        assert error.code is ErrorCode.INVALID_REQUEST, error
        return error.message
    return None


def service_accepts(payload: Any) -> bool:
    return service_refusal(payload) is None


def misses_a_rank_field(payload: Any) -> bool:
    """Whether some document lacks a field rank_fields names, or holds a non-string there: the
    one rule of the request that JSON Schema cannot state (it cannot read a value as names)."""
    if not isinstance(payload, dict):
        return False
    rank_fields, documents = payload.get("rank_fields"), payload.get("documents")
    if not isinstance(rank_fields, list) or not isinstance(documents, list):
        return False
    names = [name for name in rank_fields if isinstance(name, str)]
    return any(isinstance(d, dict) and any(not isinstance(d.get(n), str) for n in names) for d in documents)


def assert_agree(payload: Any) -> None:
    schema_says = REQUEST_SCHEMA.is_valid(payload)
    refusal = service_refusal(payload)
    if schema_says and refusal is not None and misses_a_rank_field(payload):
        # The known difference, and nothing else: every problem the service names is a
        # missing or non-string rank field.
        problems = [p for p in refusal.split("; ") if not p.startswith("and ")]
        assert all(", named in rank_fields, " in p for p in problems), refusal
        return
    assert (refusal is None) == schema_says, (
        f"jsonschema {'accepts' if schema_says else 'rejects'} but the service does not: {payload!r}"
        f" ({refusal})"
    )


# --- the files ---------------------------------------------------------------------------


def test_committed_schema_files_are_what_the_models_generate() -> None:
    generated = json_schemas()
    assert sorted(generated) == sorted(SCHEMA_FILES)
    assert sorted(p.name for p in DEFAULT_OUT_DIR.iterdir()) == sorted(SCHEMA_FILES)
    for file_name, schema in generated.items():
        committed = (DEFAULT_OUT_DIR / file_name).read_text(encoding="utf-8")
        assert committed == render(schema), f"{file_name} is stale: run python -m schemas.export"
    assert stale_files() == []


@pytest.mark.parametrize("file_name", SCHEMA_FILES)
def test_schema_files_are_valid_draft_2020_12(file_name: str) -> None:
    schema = json.loads((DEFAULT_OUT_DIR / file_name).read_text(encoding="utf-8"))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def test_export_command_writes_the_files_and_check_spots_stale_ones(tmp_path: Path) -> None:
    def export(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "schemas.export", *args],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=False,
        )

    written = export(str(tmp_path))
    assert written.returncode == 0, written.stderr
    for file_name in SCHEMA_FILES:
        assert (tmp_path / file_name).read_bytes() == (DEFAULT_OUT_DIR / file_name).read_bytes()
    assert export("--check", str(tmp_path)).returncode == 0
    assert export("--check").returncode == 0

    (tmp_path / SCHEMA_FILES[0]).write_text("{}\n", encoding="utf-8")
    checked = export("--check", str(tmp_path))
    assert checked.returncode == 1
    assert SCHEMA_FILES[0] in checked.stderr


# --- requests: hand-picked examples ------------------------------------------------------

VALID = {"request_id": "r", "query": "q", "documents": ["d"]}

EXAMPLES: list[tuple[dict[str, Any], bool]] = [
    (VALID, True),
    (
        {**VALID, "documents": ["", {"text": ""}, {"id": None, "text": "t"}, {"id": "i", "text": "\x00"}]},
        True,
    ),
    (
        {
            **VALID,
            "top_n": 3,
            "return_documents": True,
            "raw_scores": False,
            "model": "m",
            "prefilter": {"enabled": None, "keep": 1},
            "deadline_ms": 0,
            "reply_to": "replies.a-b_c",
        },
        True,
    ),
    ({**VALID, "top_n": None, "model": None, "prefilter": None, "deadline_ms": None, "reply_to": None}, True),
    ({**VALID, "prefilter": {}}, True),
    ({**VALID, "prefilter": {"method": "static", "keep": 5}}, True),
    ({**VALID, "prefilter": {"method": "static+bm25"}}, True),
    ({**VALID, "prefilter": {"method": None}}, True),
    ({**VALID, "documents": [{"text": "t", "score": 0.5}, {"text": "u", "score": -3}, {"text": "v", "score": None}]}, True),
    ({**VALID, "reply_to": "..."}, True),
    ({**VALID, "request_id": "x" * 128, "reply_to": "t" * 249}, True),
    ({"query": "q", "documents": ["d"]}, False),
    ({"request_id": "r", "documents": ["d"]}, False),
    ({"request_id": "r", "query": "q"}, False),
    ({**VALID, "request_id": ""}, False),
    ({**VALID, "request_id": "x" * 129}, False),
    ({**VALID, "request_id": 5}, False),
    ({**VALID, "query": ""}, False),
    ({**VALID, "query": None}, False),
    ({**VALID, "documents": []}, False),
    ({**VALID, "documents": [5]}, False),
    ({**VALID, "documents": [["d"]]}, False),
    ({**VALID, "documents": [{"id": "i"}]}, False),
    ({**VALID, "documents": [{"text": "t", "extra": 1}]}, False),
    ({**VALID, "documents": [{"id": 1, "text": "t"}]}, False),
    ({**VALID, "top_n": 0}, False),
    ({**VALID, "top_n": "1"}, False),
    ({**VALID, "top_n": True}, False),
    ({**VALID, "top_n": 1.5}, False),
    ({**VALID, "return_documents": 0}, False),
    ({**VALID, "return_documents": None}, False),
    ({**VALID, "raw_scores": "false"}, False),
    ({**VALID, "model": ""}, False),
    ({**VALID, "prefilter": {"enabled": "yes"}}, False),
    ({**VALID, "prefilter": {"keep": 0}}, False),
    ({**VALID, "prefilter": {"other": 1}}, False),
    ({**VALID, "prefilter": {"method": "tfidf"}}, False),
    ({**VALID, "prefilter": {"method": "Static"}}, False),
    ({**VALID, "prefilter": {"method": 1}}, False),
    ({**VALID, "documents": [{"text": "t", "score": "1"}]}, False),
    ({**VALID, "documents": [{"text": "t", "score": True}]}, False),
    ({**VALID, "documents": [{"score": 1.0}]}, False),
    ({**VALID, "prefilter": []}, False),
    ({**VALID, "deadline_ms": -1}, False),
    ({**VALID, "priority": 1000}, True),
    ({**VALID, "priority": -3.0}, True),
    ({**VALID, "priority": 1001}, False),
    ({**VALID, "priority": "1"}, False),
    ({**VALID, "priority": None}, False),
    ({**VALID, "reply_to": ""}, False),
    ({**VALID, "reply_to": "t" * 250}, False),
    ({**VALID, "reply_to": "a b"}, False),
    ({**VALID, "reply_to": "topic\n"}, False),
    ({**VALID, "reply_to": "\ntopic"}, False),
    ({**VALID, "reply_to": "."}, False),
    ({**VALID, "reply_to": ".."}, False),
    ({**VALID, "reply_to": "tópic"}, False),
    ({**VALID, "unknown": 1}, False),
    # structured documents: with rank_fields, objects with any fields; without, only id/text/score
    (
        {**VALID, "rank_fields": ["title", "text"], "return_documents": True,
         "documents": [{"id": "a", "title": "Kafka", "text": "A log.", "tags": ["x", 1, None], "n": {"m": 2.5}},
                       {"title": "", "text": "", "score": 0.5, "id": None}]},
        True,
    ),
    ({**VALID, "rank_fields": ["id"], "documents": [{"id": "i"}]}, True),
    ({**VALID, "rank_fields": None, "documents": ["d", {"text": "t"}]}, True),
    ({**VALID, "rank_fields": ["title"], "documents": ["d"]}, False),
    ({**VALID, "rank_fields": ["title"], "documents": []}, False),
    ({**VALID, "rank_fields": ["title"], "documents": [{"title": "t", "id": 5}]}, False),
    ({**VALID, "rank_fields": ["title"], "documents": [{"title": "t", "score": "1"}]}, False),
    ({**VALID, "rank_fields": [], "documents": [{"title": "t"}]}, False),
    ({**VALID, "rank_fields": [""], "documents": [{"": "t"}]}, False),
    ({**VALID, "rank_fields": ["title", "title"], "documents": [{"title": "t"}]}, False),
    ({**VALID, "rank_fields": "title", "documents": [{"title": "t"}]}, False),
    ({**VALID, "rank_fields": [1], "documents": [{"1": "t"}]}, False),
    ({**VALID, "documents": [{"title": "t"}]}, False),
    ({**VALID, "documents": [{"text": "t", "title": "u"}]}, False),
    # chunking and instructions
    ({**VALID, "max_chunks_per_doc": 4, "chunk_overlap_tokens": 0, "truncation_direction": "left",
      "instruction": "Given a web search query, retrieve relevant passages"}, True),
    ({**VALID, "max_chunks_per_doc": None, "chunk_overlap_tokens": None, "truncation_direction": None,
      "instruction": None}, True),
    ({**VALID, "max_chunks_per_doc": 0}, False),
    ({**VALID, "max_chunks_per_doc": "2"}, False),
    ({**VALID, "chunk_overlap_tokens": -1}, False),
    ({**VALID, "chunk_overlap_tokens": 1.5}, False),
    ({**VALID, "truncation_direction": "middle"}, False),
    ({**VALID, "truncation_direction": "Left"}, False),
    ({**VALID, "instruction": ""}, False),
    ({**VALID, "instruction": 3}, False),
]


@pytest.mark.parametrize(("payload", "valid"), EXAMPLES)
def test_examples_are_judged_alike_by_jsonschema_and_the_service(
    payload: dict[str, Any], valid: bool
) -> None:
    assert REQUEST_SCHEMA.is_valid(payload) is valid
    assert service_accepts(payload) is valid


@pytest.mark.parametrize("field", ["top_n", "deadline_ms", "prefilter.keep", "max_chunks_per_doc",
                                   "chunk_overlap_tokens"])
@pytest.mark.parametrize(("number", "valid"), [(2.0, True), (1e3, True), (2.5, False), (True, False)])
def test_integers_with_a_zero_fraction_are_integers_to_both(field: str, number: Any, valid: bool) -> None:
    # JSON Schema's "integer" includes 2.0 (and no standard validator can tell it from 2), so
    # the service takes it too: a client validating with our schema never sends what we refuse.
    payload = {**VALID, "prefilter": {"keep": number}} if field == "prefilter.keep" else {**VALID, field: number}
    assert REQUEST_SCHEMA.is_valid(payload) is valid
    assert service_accepts(payload) is valid


def test_known_differences() -> None:
    # A document score beyond a double's range is a "number" to JSON Schema; the service
    # refuses it (as infinity, or as an integer that has no float).
    huge = {**VALID, "documents": [{"text": "t", "score": 10**400}]}
    assert REQUEST_SCHEMA.is_valid(huge) and not service_accepts(huge)
    assert REQUEST_SCHEMA.is_valid({**VALID, "documents": [{"text": "t", "score": float("inf")}]})
    with pytest.raises(RequestError):
        parse_request(b'{"request_id": "r", "query": "q", "documents": [{"text": "t", "score": 1e999}]}')
    # JSON Schema cannot see unpaired surrogates; the service refuses what it could not
    # write back out as UTF-8.
    assert REQUEST_SCHEMA.is_valid({**VALID, "query": "\ud800"})
    with pytest.raises(RequestError):
        parse_request(b'{"request_id": "r", "query": "\\ud800", "documents": ["d"]}')
    # On the wire a result's document is an object or absent; the model also takes null
    # (meaning absent) so that engines can pass None.
    response = json.loads(encode(_example_response()))
    response["results"][0]["document"] = None
    assert not RESPONSE_SCHEMA.is_valid(response)
    assert parse_response(json.dumps(response).encode()).results[0].document is None
    # Likewise a missing stage: the model's default (cross_encoder) spares the engines
    # from spelling it out; encode always writes it.
    del response["results"][0]["stage"]
    assert not RESPONSE_SCHEMA.is_valid(response)
    assert parse_response(json.dumps(response).encode()).results[0].stage == "cross_encoder"
    # JSON Schema cannot read rank_fields' values as the names of other fields: it accepts a
    # document without a named field, or with a non-string there; the service does not.
    for document in ({"body": "b"}, {"title": 5}):
        missing = {**VALID, "rank_fields": ["title"], "documents": [document]}
        assert REQUEST_SCHEMA.is_valid(missing) and not service_accepts(missing)
        assert misses_a_rank_field(missing)
        assert "documents[0]: field 'title'" in (service_refusal(missing) or "")
    # A structured document's other fields are any JSON to the schema; the service refuses what
    # it could not echo: a number beyond a double's range, an unpaired surrogate.
    assert REQUEST_SCHEMA.is_valid({**VALID, "rank_fields": ["t"], "documents": [{"t": "x", "n": float("inf")}]})
    for raw in (b'{"request_id": "r", "query": "q", "rank_fields": ["t"], "documents": [{"t": "x", "n": 1e999}]}',
                b'{"request_id": "r", "query": "q", "rank_fields": ["t"], "documents": [{"t": "x", "n": ["\\ud800"]}]}'):
        with pytest.raises(RequestError, match=r"^invalid_request: documents\[0\]: "):
            parse_request(raw)
    # A chunk's span is [start, end) within its chunks: a schema cannot compare two numbers.
    response = json.loads(encode(_example_response()))
    response["results"][0]["chunk"] = {"index": 2, "start": 9, "end": 3, "chunks": 2}
    assert RESPONSE_SCHEMA.is_valid(response)
    with pytest.raises(ValueError, match="before its start"):
        parse_response(json.dumps(response).encode())


# --- requests: generated -----------------------------------------------------------------

FIELDS = sorted(RerankRequest.model_fields)
TOPIC_ALPHABET = "abcXYZ019._-"

texts = st.text(max_size=12)
non_empty_texts = st.text(min_size=1, max_size=12)
# Integral floats included: JSON Schema's integers, and so the service's.
json_numbers = (
    st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(min_value=-(2**53), max_value=2**53).map(float)
)
json_scalars = st.none() | st.booleans() | json_numbers | texts
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=6,
)
# Values just inside and just outside the constraints, which random values rarely hit.
edge_values = st.sampled_from(
    [0, 1, -1, "", ".", "..", "...", "a", "a b", "topic\n", "x" * 128, "x" * 129, "x" * 249, "x" * 250,
     True, False, None, [], {}, [""], [{}], {"text": ""}, {"enabled": None}, {"keep": 1}]
)
anything = json_values | edge_values

documents = st.lists(
    texts
    | st.fixed_dictionaries(
        {"text": texts},
        optional={"id": st.none() | texts,
                  "score": st.none() | st.integers(-(2**60), 2**60) | st.floats(allow_nan=False, allow_infinity=False)},
    ),
    min_size=1,
    max_size=4,
)
PREFILTER_METHODS = ["bi-encoder", "static", "bm25", "client", "static+bm25"]
plain_valid_requests = st.fixed_dictionaries(
    {
        "request_id": st.text(min_size=1, max_size=128),
        "query": non_empty_texts,
        "documents": documents,
    },
    optional={
        "top_n": st.none() | st.integers(min_value=1, max_value=2**70),
        "return_documents": st.booleans(),
        "raw_scores": st.booleans(),
        "model": st.none() | non_empty_texts,
        "prefilter": st.none()
        | st.fixed_dictionaries(
            {}, optional={"enabled": st.none() | st.booleans(), "keep": st.none() | st.integers(min_value=1),
                          "method": st.none() | st.sampled_from(PREFILTER_METHODS)}
        ),
        "deadline_ms": st.none() | st.integers(min_value=0, max_value=2**63),
        "priority": st.integers(min_value=-1000, max_value=1000),
        "reply_to": st.none()
        | st.text(alphabet=TOPIC_ALPHABET, min_size=1, max_size=249).filter(lambda t: t not in (".", "..")),
        "rank_fields": st.none(),
        "max_chunks_per_doc": st.none() | st.integers(min_value=1, max_value=2**70),
        "chunk_overlap_tokens": st.none() | st.integers(min_value=0, max_value=2**70),
        "truncation_direction": st.none() | st.sampled_from(["right", "left"]),
        "instruction": st.none() | non_empty_texts,
    },
)
# Names a structured document's fields may have; "score" is a number, so never a rank field.
FIELD_NAMES = ["title", "text", "body", "id", "x y", "é", "copy", "model_dump"]
rank_field_names = (st.sampled_from([n for n in FIELD_NAMES]) | non_empty_texts).filter(lambda n: n != "score")


@st.composite
def fielded_requests(draw: st.DrawFn) -> dict[str, Any]:
    """A valid request with rank_fields: objects with the named fields as strings, and others."""
    payload = draw(plain_valid_requests)
    rank_fields = draw(st.lists(rank_field_names, min_size=1, max_size=3, unique=True))
    others = st.fixed_dictionaries(
        {},
        optional={"id": st.none() | texts, "score": st.none() | st.floats(allow_nan=False, allow_infinity=False),
                  "tags": json_values, "text": json_values, "body": json_values, "x y": json_values},
    )
    documents = draw(st.lists(
        st.builds(lambda extra, named: {**extra, **named}, others, st.fixed_dictionaries({n: texts for n in rank_fields})),
        min_size=1, max_size=4,
    ))
    return {**payload, "rank_fields": rank_fields, "documents": documents}


valid_requests = plain_valid_requests | fielded_requests()


# --- requests generated from the shipped schema file itself -------------------------------
#
# hypothesis-jsonschema's from_schema would be the obvious generator, but its last release
# (0.23.1) fails on the hypothesis we pin (it calls a removed internal, `many.more()`). The
# request schema uses few keywords, so this reads them itself, and refuses any other keyword
# so that a contract change which adds one is noticed here.

_ANNOTATIONS = {"$schema", "$defs", "title", "description", "default"}
_IDENTIFIER_CHARS = "abcXYZ019._-"


def schema_strategy(schema: dict[str, Any], root: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Documents valid under ``schema`` (a part of ``root``), drawn from the schema alone."""
    keywords = set(schema) - _ANNOTATIONS
    if "$ref" in keywords:
        assert keywords == {"$ref"} and schema["$ref"].startswith("#/$defs/"), schema
        return st.deferred(lambda: schema_strategy(root["$defs"][schema["$ref"].split("/")[-1]], root))
    for combinator in ("anyOf", "oneOf"):
        if combinator in keywords:
            assert keywords == {combinator}, schema
            return st.one_of([schema_strategy(branch, root) for branch in schema[combinator]])
    if "if" in keywords:
        # Each branch merged into the object, then kept only where the condition says so.
        assert {"then", "else"} <= keywords and schema["type"] == "object", schema
        condition = Draft202012Validator(schema["if"]).is_valid
        base = {k: v for k, v in schema.items() if k not in ("if", "then", "else")}
        then = _merge(base, schema["then"], required=schema["if"].get("required", []))
        return (schema_strategy(then, root).filter(condition)
                | schema_strategy(_merge(base, schema["else"]), root).filter(lambda v: not condition(v)))
    kind = schema.get("type")
    known = {
        "string": {"type", "minLength", "maxLength", "not", "enum"},
        "integer": {"type", "minimum", "maximum"},
        "number": {"type"},
        "boolean": {"type"},
        "null": {"type"},
        "object": {"type", "properties", "required", "additionalProperties"},
        "array": {"type", "items", "minItems", "uniqueItems"},
    }
    assert kind in known and keywords <= known[kind], f"keyword this generator does not know: {schema}"
    if kind == "string" and "enum" in schema:
        assert keywords == {"type", "enum"}, schema
        return st.sampled_from(schema["enum"])
    if kind == "number":
        # Any JSON number a client can write: finite doubles and integers a double holds.
        return st.floats(allow_nan=False, allow_infinity=False) | st.integers(min_value=-(2**53), max_value=2**53)
    if kind == "string":
        low = schema.get("minLength", 0)
        high = schema.get("maxLength", low + 16)
        strategy = (
            st.text(min_size=low, max_size=min(high, low + 16))
            | st.text(alphabet=_IDENTIFIER_CHARS, min_size=low, max_size=min(high, low + 16))
            | st.text(alphabet=_IDENTIFIER_CHARS, min_size=high, max_size=high)
        )
        if "not" in schema:  # whatever "not" rules out, the validator knows it
            strategy = strategy.filter(Draft202012Validator(schema).is_valid)
        return strategy
    if kind == "integer":
        integers = st.integers(min_value=schema.get("minimum"), max_value=schema.get("maximum", 2**64))
        # JSON Schema's integer includes 2.0: a client validating with the schema may send it.
        return integers | integers.filter(lambda i: abs(i) <= 2**53).map(float)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        low = schema.get("minItems", 0)
        unique_by = (lambda v: json.dumps(v, sort_keys=True)) if schema.get("uniqueItems") else None
        return st.lists(schema_strategy(schema["items"], root), min_size=low, max_size=low + 3, unique_by=unique_by)
    assert schema.get("additionalProperties") in (False, True), schema
    properties = {name: schema_strategy(sub, root) for name, sub in schema["properties"].items()}
    required = set(schema.get("required", []))
    declared = st.fixed_dictionaries(
        {name: strategy for name, strategy in properties.items() if name in required},
        optional={name: strategy for name, strategy in properties.items() if name not in required},
    )
    if schema["additionalProperties"] is False:
        return declared
    # Any other field, with any JSON value (names from a few likely ones and from anywhere).
    other_names = (st.sampled_from(["title", "text", "body"]) | texts).filter(lambda n: n not in properties)
    return st.builds(lambda known, other: {**other, **known}, declared,
                     st.dictionaries(other_names, json_values, max_size=3))


def _merge(base: dict[str, Any], branch: dict[str, Any], required: list[str] = ()) -> dict[str, Any]:
    """``base`` with the keywords ``branch`` gives its properties (``{"properties": {name:
    keywords}}``) added to theirs, and ``required`` added to its own."""
    assert set(branch) == {"properties"}, branch
    properties = {name: {**sub, **branch["properties"].get(name, {})} for name, sub in base["properties"].items()}
    return {**base, "properties": properties, "required": sorted({*base.get("required", []), *required})}


REQUEST_SCHEMA_DOCUMENT = json.loads(
    (REPO_ROOT / "schemas" / "json" / "rerank-request.schema.json").read_text(encoding="utf-8")
)


@st.composite
def with_rank_fields_filled(draw: st.DrawFn, requests: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    """A request drawn from ``requests``; where it has rank_fields, mostly with every document
    given each named field as a string: the one rule the schema cannot state (so it cannot
    generate it), applied by hand."""
    payload = draw(requests)
    if payload.get("rank_fields") and draw(st.integers(0, 3)):
        for document in payload["documents"]:
            document.update({name: draw(texts) for name in payload["rank_fields"]})
    return payload


schema_valid_requests = with_rank_fields_filled(schema_strategy(REQUEST_SCHEMA_DOCUMENT, REQUEST_SCHEMA_DOCUMENT))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema_valid_requests)
def test_every_request_the_shipped_schema_allows_is_accepted(payload: dict[str, Any]) -> None:
    assert REQUEST_SCHEMA.is_valid(payload), f"the generator strayed: {payload!r}"
    if misses_a_rank_field(payload):  # the known difference; assert_agree checks its message
        assert_agree(payload)
        return
    request = parse_request(json.dumps(payload).encode("utf-8"), NO_LIMITS)
    assert len(request.texts()) == len(payload["documents"])
    # and it reads back as what was sent (2.0 as the integer 2)
    for field in ("top_n", "deadline_ms"):
        if payload.get(field) is not None:
            assert getattr(request, field) == payload[field]
            assert type(getattr(request, field)) is int


@st.composite
def near_valid_requests(draw: st.DrawFn, base: st.SearchStrategy[dict[str, Any]] = valid_requests) -> dict[str, Any]:
    """A valid request with a few random changes, so that most examples are close to the
    line between valid and invalid, where the two validators could disagree."""
    payload = draw(base)
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        change = draw(st.sampled_from(["drop", "unknown", "replace", "document", "prefilter", "rank_fields"]))
        if change == "drop" and payload:
            del payload[draw(st.sampled_from(sorted(payload)))]
        elif change == "unknown":
            payload[draw(texts.filter(lambda k: k not in FIELDS))] = draw(anything)
        elif change == "replace":
            payload[draw(st.sampled_from(FIELDS))] = draw(anything)
        elif change == "document" and isinstance(payload.get("documents"), list) and payload["documents"]:
            index = draw(st.integers(min_value=0, max_value=len(payload["documents"]) - 1))
            payload["documents"][index] = draw(
                anything | st.dictionaries(st.sampled_from(["id", "text", "score", *FIELD_NAMES]), anything, max_size=3)
            )
        elif change == "prefilter":
            payload["prefilter"] = draw(
                st.dictionaries(st.sampled_from(["enabled", "keep", "method", "mode"]),
                                anything | st.sampled_from([*PREFILTER_METHODS, "BM25", "static+"]), max_size=3)
            )
        elif change == "rank_fields":
            payload["rank_fields"] = draw(
                st.lists(st.sampled_from(FIELD_NAMES) | anything, max_size=3) | anything | st.none()
            )
    return payload


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(near_valid_requests())
def test_generated_requests_are_judged_alike(payload: dict[str, Any]) -> None:
    assert_agree(payload)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(near_valid_requests(schema_valid_requests))
def test_requests_near_the_shipped_schema_are_judged_alike(payload: dict[str, Any]) -> None:
    # Both ways: what the service refuses, the schema refuses too, and the reverse.
    assert_agree(payload)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS) | texts, anything, max_size=6))
def test_arbitrary_objects_are_judged_alike(payload: dict[str, Any]) -> None:
    assert_agree(payload)


@settings(max_examples=200, deadline=None)
@given(valid_requests)
def test_valid_requests_survive_encode_and_parse(payload: dict[str, Any]) -> None:
    request = parse_request(json.dumps(payload, ensure_ascii=False).encode("utf-8"), NO_LIMITS)
    encoded = encode(request)
    assert REQUEST_SCHEMA.is_valid(json.loads(encoded))
    assert parse_request(encoded, NO_LIMITS) == request


# --- responses ---------------------------------------------------------------------------


def _example_response() -> RerankResponse:
    return RerankResponse(
        request_id="r",
        model="minilm",
        engine="onnxruntime",
        results=[RankedResult(index=0, id="a", relevance_score=0.5, document=DocumentText(text="t"),
                              chunk=BestChunk(index=1, start=40, end=90, chunks=3))],
        meta=ResponseMeta(
            documents=1, scored_by_cross_encoder=1, pairs_scored=3, prefiltered=False, queue_ms=0, inference_ms=1,
            total_ms=1, worker="w",
        ),
    )


finite_floats = st.floats(allow_nan=False, allow_infinity=False)
durations = st.floats(min_value=0, max_value=1e9, allow_nan=False)


@st.composite
def best_chunks(draw: st.DrawFn) -> BestChunk:
    count = draw(st.integers(min_value=1, max_value=50))
    start = draw(st.integers(min_value=0, max_value=10**6))
    return BestChunk(index=draw(st.integers(0, count - 1)), start=start, end=start + draw(st.integers(0, 10**4)),
                     chunks=count)


chunks = best_chunks()


@st.composite
def responses(draw: st.DrawFn) -> RerankResponse:
    scored = draw(
        st.lists(
            st.tuples(
                finite_floats,
                st.sampled_from(["cross_encoder", "prefilter"]),
                st.none() | texts,
                st.none() | texts.map(lambda t: DocumentText(text=t)) | st.dictionaries(texts, json_values, max_size=3),
                st.none() | chunks,
            ),
            max_size=6,
        )
    )
    results = [
        RankedResult(index=index, id=doc_id, relevance_score=score, stage=stage, document=document, chunk=chunk)
        for index, (score, stage, doc_id, document, chunk) in enumerate(scored)
    ]
    documents = len(results) + draw(st.integers(min_value=0, max_value=5))
    return RerankResponse(
        request_id=draw(st.text(min_size=1, max_size=128)),
        model=draw(texts),
        engine=draw(texts),
        results=rank_results(results, top_n=draw(st.none() | st.integers(min_value=1, max_value=8))),
        meta=ResponseMeta(
            documents=documents,
            scored_by_cross_encoder=draw(st.integers(min_value=0, max_value=documents)),
            pairs_scored=draw(st.integers(min_value=0, max_value=10**6)),
            prefiltered=any(r.stage == "prefilter" for r in results),
            queue_ms=draw(durations),
            inference_ms=draw(durations),
            total_ms=draw(durations),
            worker=draw(texts),
        ),
    )


@settings(max_examples=200, deadline=None)
@given(responses())
def test_encoded_responses_match_the_response_schema_and_read_back(response: RerankResponse) -> None:
    encoded = encode(response)
    message = json.loads(encoded)
    assert RESPONSE_SCHEMA.is_valid(message)
    assert not ERROR_SCHEMA.is_valid(message)
    for result, sent in zip(response.results, message["results"]):
        assert ("document" in sent) is (result.document is not None)
        assert ("chunk" in sent) is (result.chunk is not None)
    # The same data back: an echoed object {"text": ...} reads back as a DocumentText.
    assert parse_response(encoded).model_dump(mode="json") == response.model_dump(mode="json")


@settings(max_examples=100, deadline=None)
@given(
    st.none() | st.text(min_size=1, max_size=128),
    st.sampled_from(list(ErrorCode)),
    st.text(max_size=200),
)
def test_encoded_errors_match_the_error_schema_and_read_back(
    request_id: str | None, code: ErrorCode, message: str
) -> None:
    response = ErrorResponse(request_id=request_id, error=ErrorDetail(code=code, message=message))
    encoded = encode(response)
    assert ERROR_SCHEMA.is_valid(json.loads(encoded))
    assert not RESPONSE_SCHEMA.is_valid(json.loads(encoded))
    assert parse_response(encoded) == response


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m.pop("meta"),
        lambda m: m.update(status="error"),
        lambda m: m.update(extra=1),
        lambda m: m["results"][0].update(stage="bi_encoder"),
        lambda m: m["results"][0].update(relevance_score="0.5"),
        lambda m: m["meta"].update(prefiltered=0),
        lambda m: m["results"][0].update(index=-1),
        lambda m: m["results"][0].pop("id"),
        lambda m: m["meta"].update(queue_ms=-1),
        lambda m: m["meta"].pop("worker"),
        lambda m: m["meta"].pop("pairs_scored"),
        lambda m: m["meta"].update(pairs_scored=-1),
        lambda m: m["results"][0]["chunk"].update(chunks=0),
        lambda m: m["results"][0]["chunk"].update(start=-1),
        lambda m: m["results"][0]["chunk"].pop("end"),
        lambda m: m["results"][0]["chunk"].update(extra=1),
        lambda m: m["results"][0].update(document="t"),
    ],
)
def test_broken_responses_are_rejected_by_both(change: Any) -> None:
    message = json.loads(encode(_example_response()))
    change(message)
    assert not RESPONSE_SCHEMA.is_valid(message)
    with pytest.raises(ValueError):  # pydantic.ValidationError is a ValueError
        parse_response(json.dumps(message).encode())


@pytest.mark.parametrize(
    "message",
    [
        {"request_id": "r", "status": "error", "error": {"code": "teapot", "message": "m"}},
        {"request_id": "r", "status": "error", "error": {"code": "internal"}},
        {"status": "error", "error": {"code": "internal", "message": "m"}},
        {"request_id": "", "status": "error", "error": {"code": "internal", "message": "m"}},
    ],
)
def test_broken_errors_are_rejected_by_both(message: dict[str, Any]) -> None:
    assert not ERROR_SCHEMA.is_valid(message)
    with pytest.raises(ValueError):
        parse_response(json.dumps(message).encode())
