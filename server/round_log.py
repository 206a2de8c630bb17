"""The run directory's round log: one JSON line per finished round, appended by the round loop as it goes.

It is the channel through which a process that does not run the ServerApp (``fedtune server start``, whose
ServerApp runs inside Flower's ``flwr-serverapp``) follows a run: it reads the lines that appeared since it last
looked. Checkpoints stay what they are for (resuming); nothing polls them. A line is written with one ``write`` of
a complete line, so a reader never sees a partial record as complete: a line without its newline is left for later.
"""

from __future__ import annotations

import json
from pathlib import Path

from common.federation.rounds import RoundRecord
from common.fileio import json_safe

ROUND_LOG_FILE = "rounds.jsonl"


class RoundLog:
    """Append-only log of :class:`RoundRecord` lines in ``OUT/rounds.jsonl``."""

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / ROUND_LOG_FILE

    def append(self, record: RoundRecord) -> None:
        """Add one finished round."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(json_safe(record.to_json()), allow_nan=False) + "\n")

    def read(self, start: int = 0) -> list[RoundRecord]:
        """Complete records from the ``start``-th on (none if the log does not exist yet)."""
        if not self.path.exists():
            return []
        complete = self.path.read_text(encoding="utf-8").split("\n")[:-1]  # the last piece is "" or still partial
        return [RoundRecord.from_json(json.loads(line)) for line in complete[start:] if line]
