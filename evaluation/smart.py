"""``python -m evaluation.smart``: a classic SMART-format test collection as a BEIR folder.

Cranfield, CISI, MEDLINE, CACM and their kin ship as three files: documents and queries as records
that start with ``.I <id>`` and hold fields such as ``.T`` (title), ``.A`` (authors), ``.B``
(source) and ``.W`` (text), and relevance judgments, one ``query document [grade]`` line each.
This writes ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/test.tsv`` for :mod:`evaluation` and
:mod:`evaluation.first_stages`. Get the files yourself (they are not part of this project).

Queries are numbered in the order of the query file (``--query-ids order``: Cranfield's qrels
count queries 1, 2, ... while its ``.I`` numbers have gaps) or by their ``.I`` (``ids``, CISI).
Grades: ``cranfield`` turns 1 (complete answer) .. 4 (minimal interest) into gains 4 .. 1 and
drops -1 (no interest) and 5; ``binary`` makes every listed pair relevant (grade 1).

    python -m evaluation.smart --documents cran.all.1400 --queries cran.qry --qrels cranqrel \\
        --query-ids order --grades cranfield --title-in-text --out data/cranfield
    python -m evaluation.smart --documents CISI.ALL --queries CISI.QRY --qrels CISI.REL \\
        --query-ids ids --grades binary --out data/cisi
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import click

_RECORD = re.compile(r"^\.I\s+", re.M)
_FIELD = re.compile(r"^\.([A-Z])\s*\n(.*?)(?=^\.[A-Z]\s*$|\Z)", re.M | re.S)


def records(text: str) -> list[tuple[str, dict[str, str]]]:
    """``(id, {field letter: text, whitespace collapsed})`` of every record of a SMART file."""
    out = []
    for block in _RECORD.split(text)[1:]:
        ident, _, rest = block.partition("\n")
        out.append((ident.strip(), {m.group(1): " ".join(m.group(2).split()) for m in _FIELD.finditer(rest)}))
    return out


def judgments(text: str, grades: str) -> dict[tuple[str, str], int]:
    """``{(query id, document id): gain}`` of a qrels file of ``query document [grade ...]`` lines."""
    out = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 2:
            continue
        if grades == "cranfield":
            grade = int(fields[2]) if len(fields) > 2 else 1
            if 1 <= grade <= 4:
                out[(fields[0], fields[1])] = 5 - grade
        else:
            out[(fields[0], fields[1])] = 1
    return out


def write_beir(out: Path, corpus: dict[str, tuple[str, str]], queries: dict[str, str],
               qrels: dict[tuple[str, str], int]) -> None:
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    (out / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n"
                                              for i, (t, x) in corpus.items()), encoding="utf-8")
    (out / "queries.jsonl").write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in queries.items()),
                                       encoding="utf-8")
    (out / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t{g}\n" for (q, d), g in qrels.items()), encoding="utf-8")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--documents", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@click.option("--queries", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@click.option("--qrels", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@click.option("--query-ids", type=click.Choice(["order", "ids"]), default="ids", show_default=True,
              help="number queries by their place in the file, or by their .I")
@click.option("--grades", type=click.Choice(["binary", "cranfield"]), default="binary", show_default=True)
@click.option("--title-in-text", is_flag=True, help="the .W text repeats the .T title (Cranfield): leave the title out")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
def main(documents, queries, qrels, query_ids, grades, title_in_text, out) -> None:
    """Write a SMART-format collection as a BEIR folder."""
    read = lambda path: path.read_text(encoding="utf-8", errors="replace")  # noqa: E731
    corpus = {i: ("" if title_in_text else f.get("T", ""), f.get("W", "")) for i, f in records(read(documents))}
    asked = records(read(queries))
    texts = {(str(n) if query_ids == "order" else i): " ".join(f[k] for k in ("T", "W") if f.get(k))
             for n, (i, f) in enumerate(asked, 1)}
    judged = judgments(read(qrels), grades)
    write_beir(out, corpus, texts, judged)
    click.echo(f"{out}: {len(corpus)} documents, {len(texts)} queries, {len(judged)} judgments")


if __name__ == "__main__":
    main(prog_name="python -m evaluation.smart")
