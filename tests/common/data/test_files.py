"""Input files are opened only if regular, never block, and are read within bounds (common/data/files.py).

Each case goes through ``read_labeled_file``, the way every caller reads data, and checks the one error it gives.
"""

from __future__ import annotations

import json
import os
import threading
import tracemalloc
from pathlib import Path

import pytest

from common.data.readers import MAX_SIDECAR_BYTES, read_labeled_file
from common.data.spec import DataSpec
from common.errors import DataValidationError
from tests.helpers import write_jsonl


def _error(path: Path, spec: DataSpec | None = None) -> str:
    with pytest.raises(DataValidationError) as info:
        read_labeled_file(path, spec)
    message = str(info.value)
    assert message.startswith(f"{path}"), message
    assert "\n" not in message
    return message


def test_a_line_without_end_is_refused_after_reading_only_the_bound(tmp_path):
    # 256 MiB of zero bytes (sparse: no disk used) and no newline. Reading it whole would allocate 256 MiB.
    path = tmp_path / "huge.jsonl"
    with path.open("wb") as handle:
        handle.truncate(256 * 1024 * 1024)
    tracemalloc.start()
    try:
        message = _error(path, DataSpec(max_line_bytes=1000))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024, f"read {peak:,} bytes into memory for a 1,000-byte line limit"
    assert f"{path}:1: line is over the limit of 1,000 bytes" in message


def test_a_line_of_exactly_the_limit_is_accepted(tmp_path):
    rows = [{"text": "a", "label": 0}, {"text": "b", "label": 1}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    longest = max(len(line) for line in path.read_bytes().split(b"\n"))
    assert len(read_labeled_file(path, DataSpec(max_line_bytes=longest))) == 2
    assert ":1: line is over the limit" in _error(path, DataSpec(max_line_bytes=longest - 1))


def test_csv_quoted_fields_spanning_lines_still_parse(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('text,label\n"first line\nsecond, line",pos\n"one ""quote""\r\nmore",neg\nplain,pos\n')
    data = read_labeled_file(path)
    assert data.texts == ("first line\nsecond, line", 'one "quote"\r\nmore', "plain")
    assert data.labels == (1, 0, 1)


def test_csv_error_after_a_multi_line_record_names_the_right_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('text,label\n"a\nb\nc",pos\nbad,neg,extra\n')
    assert ":5: row has 3 fields" in _error(path)


def test_csv_with_old_mac_line_endings(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b"text,label\rgood,pos\rbad,neg\r")
    assert read_labeled_file(path).texts == ("good", "bad")


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "d.jsonl"
    os.mkfifo(fifo)
    outcome: list[BaseException | None] = []

    def read() -> None:
        try:
            read_labeled_file(fifo)
            outcome.append(None)
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=60)
    if reader.is_alive():  # unblock the reader (a writer opens the FIFO), then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("reading a FIFO blocked")
    (error,) = outcome
    assert isinstance(error, DataValidationError)
    assert str(error) == f"{fifo}: this is a FIFO (named pipe), not a regular file"


def test_a_directory_is_refused(tmp_path):
    directory = tmp_path / "d.jsonl"
    directory.mkdir()
    assert _error(directory) == f"{directory}: this is a directory, not a regular file"


def test_a_device_is_refused_unopened():
    assert _error(Path("/dev/zero"), DataSpec(format="jsonl")).endswith(
        "this is a character device, not a regular file"
    )


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs Linux /proc")
def test_proc_self_mem_gives_the_os_reason():
    message = _error(Path("/proc/self/mem"), DataSpec(format="jsonl"))
    assert message == "/proc/self/mem: cannot read the file: Input/output error"


def test_permission_denied_gives_the_os_reason(tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 1}])
    real_open = os.open

    def refuse(target, *args, **kwargs):
        if Path(target) == path:
            raise PermissionError(13, "Permission denied", str(target))
        return real_open(target, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)  # root reads everything: deny the way the OS would
    assert _error(path) == f"{path}: cannot open the file: Permission denied"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files without read permission")
def test_unreadable_file(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 1}])
    path.chmod(0)
    assert _error(path) == f"{path}: cannot open the file: Permission denied"


def test_labels_sidecar_is_read_the_same_safe_way(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 1}])
    sidecar = tmp_path / "labels.json"
    sidecar.mkdir()
    with pytest.raises(DataValidationError, match=r"labels\.json: this is a directory, not a regular file$"):
        read_labeled_file(path)
    sidecar.rmdir()
    with sidecar.open("wb") as handle:
        handle.truncate(MAX_SIDECAR_BYTES + 1)
    with pytest.raises(DataValidationError, match=r"labels\.json: the file is over the limit of 1,048,576 bytes"):
        read_labeled_file(path)
    sidecar.write_text(json.dumps(["neg", "\udcff"]))  # a JSON escape of a lone surrogate
    with pytest.raises(DataValidationError, match=r"labels\.json: a label name holds '\\udcff'"):
        read_labeled_file(path)


@pytest.mark.parametrize("column", ["text", "label"])
def test_lone_surrogate_escapes_in_records_are_data_errors(tmp_path, column):
    rows = [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]
    rows[1][column] = "b\udcff"
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    message = _error(path)
    assert f":2: column '{column}' holds '\\udcff', a lone surrogate" in message


def test_deeply_nested_json_is_a_data_error(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("[" * 50_000 + "\n")
    assert _error(path) == f"{path}:1: not valid JSON: nested too deeply"


def test_spec_refuses_non_utf8_names_and_a_line_limit_beyond_the_maximum():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="byte 0xff at position 3"):
        DataSpec(text_column="tex\udcff")
    with pytest.raises(ValidationError, match="label names must be valid UTF-8"):
        DataSpec(labels=("neg\udcff", "pos"))
    with pytest.raises(ValidationError, match="less than or equal"):
        DataSpec(max_line_bytes=1 << 40)
