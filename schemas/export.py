"""Write the JSON Schemas (draft 2020-12) of the three messages.

    python -m schemas.export [OUT_DIR]    # default: schemas/json/
    python -m schemas.export --check      # exit 1 if schemas/json/ is out of date

The files are generated from the models and kept in the repository so that clients (and
reviewers of a contract change) can read them without running Python; a test fails when
they differ from what the models generate.

The request schema describes what the models accept, with differences that JSON Schema
cannot express: it accepts strings holding an unpaired UTF-16 surrogate (``"\\ud800"``), which
the service rejects (they cannot be written back out as UTF-8), and it cannot check that every
document of a request with ``rank_fields`` holds each named field as a string (it cannot read
one value as the names of others), which the service does. Integers written with a
fraction of zero (``2.0``) are integers to both. Size limits (max_documents and the like) are configuration, so they appear only
in the descriptions. The response schemas describe messages as ``encode`` writes them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from pydantic import BaseModel

from schemas.request import RerankRequest
from schemas.response import ErrorResponse, RerankResponse

DEFAULT_OUT_DIR = Path(__file__).parent / "json"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

# file name -> (model, mode): a request is read by the service (what it accepts), a
# response is written by it (what it sends).
_MESSAGES: dict[str, tuple[type[BaseModel], str]] = {
    "rerank-request.schema.json": (RerankRequest, "validation"),
    "rerank-response.schema.json": (RerankResponse, "serialization"),
    "rerank-error.schema.json": (ErrorResponse, "serialization"),
}


def json_schemas() -> dict[str, dict[str, Any]]:
    """The schema of each message, by file name."""
    schemas = {}
    for file_name, (model, mode) in _MESSAGES.items():
        schema = model.model_json_schema(mode=mode)  # type: ignore[arg-type]
        schemas[file_name] = {"$schema": JSON_SCHEMA_DIALECT, **schema}
    return schemas


def render(schema: dict[str, Any]) -> str:
    """The exact text of a schema file (stable, so the files diff cleanly)."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def write_json_schemas(out_dir: Path = DEFAULT_OUT_DIR) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for file_name, schema in json_schemas().items():
        path = out_dir / file_name
        path.write_text(render(schema), encoding="utf-8")
        written.append(path)
    return written


def stale_files(out_dir: Path = DEFAULT_OUT_DIR) -> list[Path]:
    """Schema files in ``out_dir`` that are missing or differ from the models."""
    stale = []
    for file_name, schema in json_schemas().items():
        path = out_dir / file_name
        if not path.is_file() or path.read_text(encoding="utf-8") != render(schema):
            stale.append(path)
    return stale


@click.command(name="python -m schemas.export", help="Write the message JSON Schemas.")
@click.argument("out_dir", required=False, type=click.Path(path_type=Path), default=DEFAULT_OUT_DIR)
@click.option("--check", is_flag=True, help="write nothing; exit 1 if the files are stale")
def main(out_dir: Path, check: bool) -> None:
    if check:
        stale = stale_files(out_dir)
        for path in stale:
            click.echo(f"stale: {path} (run python -m schemas.export)", err=True)
        sys.exit(1 if stale else 0)
    for path in write_json_schemas(out_dir):
        click.echo(path)


if __name__ == "__main__":
    main()
