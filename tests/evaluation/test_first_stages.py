"""evaluation.first_stages on a tiny BEIR folder: candidates from a corpus-level word BM25, every
first stage ranked alone beside a plain word BM25, metrics and timings in the report."""
from __future__ import annotations

import json

from click.testing import CliRunner

from evaluation.first_stages import REFERENCE, corpus_bm25_candidates, main
from evaluation.dataset import read_beir

DOCUMENTS = {
    "d1": "Opening files for reading and writing with the open function.",
    "d2": "A socket connects two processes over a network.",
    "d3": "Threads run concurrently; a lock protects shared state.",
    "d4": "Files are closed when the with block ends.",
    "d5": "The network stack retries a lost packet.",
    "d6": "Reading a file line by line saves memory.",
}
QUERIES = {"q1": "how do I open and read files", "q2": "network sockets", "q3": "locks for threads"}
QRELS = {"q1": {"d1": 2, "d6": 1, "d4": 1}, "q2": {"d2": 1, "d5": 1}, "q3": {"d3": 1}}


def beir_folder(tmp_path):
    folder = tmp_path / "tiny"
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in DOCUMENTS.items()))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in QUERIES.items()))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t{g}\n" for q, docs in QRELS.items() for d, g in docs.items()))
    return folder


def test_corpus_candidates_rank_by_stemmed_word_bm25(tmp_path):
    data = read_beir(beir_folder(tmp_path))
    candidates = corpus_bm25_candidates(data, depth=3)
    assert [d for d, _ in candidates["q2"][:2]] in (["d2", "d5"], ["d5", "d2"])  # "sockets" ~ "socket"
    assert candidates["q3"][0][0] == "d3" and len(candidates["q1"]) == 3


def test_every_first_stage_is_ranked_and_reported(tmp_path):
    folder = beir_folder(tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["--dataset", str(folder), "--make-candidates", str(tmp_path / "run.trec"),
                                       "--depth", "6", "--methods", "bm25,client,static+bm25", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "first_stages.json").read_text())
    assert report["queries"] == 3 and report["depth"] == 6
    assert list(report["methods"]) == ["corpus", REFERENCE, "bm25", "client", "static+bm25"]
    rows = report["methods"]
    assert rows[REFERENCE]["ndcg@10_vs_plain_bm25"] == 1.0
    # Over the whole (tiny) corpus, the client's scores are the corpus BM25's order.
    assert rows["client"]["ndcg@10"] == rows["corpus"]["ndcg@10"]
    assert all(0 < row["ndcg@10"] <= 1 for row in rows.values())
    assert rows["bm25"]["ms_per_request"] > 0 and rows["corpus"]["ms_per_request"] is None
    assert "| bm25 |" in (out / "first_stages.md").read_text()
    bad = CliRunner().invoke(main, ["--dataset", str(folder), "--candidates", str(tmp_path / "run.trec"),
                                    "--methods", "tfidf"])
    assert bad.exit_code != 0 and "unknown first stage" in bad.output
