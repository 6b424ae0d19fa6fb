"""evaluation.smart: SMART-format records, judgments and the BEIR folder they become."""
from __future__ import annotations

from click.testing import CliRunner

from evaluation.dataset import read_beir
from evaluation.smart import judgments, main, records

DOCUMENTS = """.I 1
.T
wing flow .
.A
smith,j.
.W
wing flow .
  the flow over a swept
wing was measured .
.I 2
.T
heat transfer
.W
heat transfer in a boundary layer .
"""
QUERIES = """.I 001
.W
what is the flow over a
swept wing ?
.I 004
.W
boundary layer heat transfer
"""


def test_records_and_judgments():
    [(first, fields), (second, _)] = records(DOCUMENTS)
    assert (first, second) == ("1", "2")
    assert fields == {"T": "wing flow .", "A": "smith,j.", "W": "wing flow . the flow over a swept wing was measured ."}
    assert judgments("1 1 2\n1 2 -1\n2 2 4\n2 1 5\n", "cranfield") == {("1", "1"): 3, ("2", "2"): 1}
    assert judgments("     1     28\t0\t0.000000\n", "binary") == {("1", "28"): 1}


def test_a_collection_becomes_a_beir_folder_with_queries_numbered_in_order(tmp_path):
    for name, text in (("docs", DOCUMENTS), ("qry", QUERIES), ("rel", "1 1 1\n2 2 2\n")):
        (tmp_path / name).write_text(text)
    out = tmp_path / "beir"
    result = CliRunner().invoke(main, ["--documents", str(tmp_path / "docs"), "--queries", str(tmp_path / "qry"),
                                       "--qrels", str(tmp_path / "rel"), "--query-ids", "order", "--grades",
                                       "cranfield", "--title-in-text", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = read_beir(out)
    assert data.queries == {"1": "what is the flow over a swept wing ?", "2": "boundary layer heat transfer"}
    assert data.qrels == {"1": {"1": 4}, "2": {"2": 3}}
    assert data.corpus["1"] == "wing flow . the flow over a swept wing was measured ."  # no title twice
