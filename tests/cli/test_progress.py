"""Round progress lines: the score columns follow the run's task."""

from __future__ import annotations

from cli.progress import round_line, round_row, round_table
from common.federation.rounds import RoundRecord


def test_a_generate_run_shows_rouge_l_and_the_sites_loss():
    record = RoundRecord(
        round=2,
        server_eval={"loss": 1.25, "perplexity": 3.49, "rouge_l": 0.5, "accuracy": None},
        federated_eval={"loss": 1.5},
    )
    line = round_line(round_row(record, "generate"), "generate")
    assert "server ROUGE-L=0.5" in line and "sites loss=1.5" in line and "server loss=1.25" in line
    assert [column.header for column in round_table("generate").columns][6:8] == ["server ROUGE-L", "sites loss"]


def test_a_classify_run_shows_accuracies():
    record = RoundRecord(round=1, server_eval={"loss": 0.5, "accuracy": 0.75}, federated_eval={"accuracy": 0.5})
    line = round_line(round_row(record))
    assert "server acc=0.75" in line and "sites acc=0.5" in line
