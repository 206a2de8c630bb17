"""``fedtune train`` refuses bad input before it reserves budget: one line, a non-zero exit, nothing spent or written.

Each case is a probe from the review "budget spent for nothing". It runs the real CLI in-process against a ledger
that already holds a run, and checks: the exit code, exactly one error line naming the option or file and the
rule, no traceback, every file of the ledger (records, head anchor, lock) unchanged byte for byte, no output.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.data.sample import sample_dataset
from tests.helpers import run_cli, write_jsonl

#: Keeps the one real training run of this module short.
QUICK = ["--epochs", "1", "--batch-size", "32", "--max-length", "16"]


def _rows(size: int = 400, *, repeat: int = 1) -> list[dict]:
    data = sample_dataset(size, seed=3)
    return [
        {"text": " ".join([text] * repeat), "label": data.label_names[y]}
        for text, y in zip(data.texts, data.labels, strict=True)
    ]


def _files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def spent(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A ledger directory whose ledger already records one real run on the sample data."""
    root = tmp_path_factory.mktemp("spent")
    data = write_jsonl(root / "sample.jsonl", _rows())
    ledger = root / "ledger" / "ledger.jsonl"
    args = ["train", "--model", str(tiny_model_dir), "--data", str(data), "--ledger", str(ledger), *QUICK]
    assert run_cli([*args, "--out", str(root / "out"), "--epsilon", "2", "--seed", "0"]) == 0
    assert ledger.stat().st_size > 0
    return root


@dataclass(frozen=True)
class Site:
    """One test's copy of the spent ledger, its data and a fresh output path."""

    model: Path
    data: Path
    ledger: Path
    out: Path
    root: Path


@pytest.fixture
def site(spent: Path, tiny_model_dir: Path, tmp_path: Path) -> Site:
    shutil.copytree(spent / "ledger", tmp_path / "ledger")
    shutil.copy(spent / "sample.jsonl", tmp_path / "sample.jsonl")
    return Site(
        tiny_model_dir, tmp_path / "sample.jsonl", tmp_path / "ledger" / "ledger.jsonl", tmp_path / "out", tmp_path
    )


def refused(site: Site, capsys: pytest.CaptureFixture[str], args: list[str], *, code: int, names: list[str]) -> str:
    """Run ``fedtune train`` with ``args`` after the defaults (the last of a repeated option wins); check it refuses."""
    capsys.readouterr()
    before = _files(site.ledger.parent)
    base = ["train", "--model", str(site.model), "--data", str(site.data), "--ledger", str(site.ledger)]
    exit_code = run_cli([*base, "--out", str(site.out), *QUICK, *args])
    err = capsys.readouterr().err.strip()
    assert exit_code == code, err
    assert err.startswith("error: ") and "\n" not in err, err
    assert "Traceback" not in err
    for name in names:
        assert name in err, err
    assert _files(site.ledger.parent) == before, "the ledger changed"
    assert not site.out.exists() or not any(site.out.iterdir()), "output was written"
    return err


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--lr", "inf"], ["'--lr'", "finite"]),
        (["--lr", "nan"], ["'--lr'", "finite"]),
        (["--epsilon", "inf"], ["'--epsilon'", "finite"]),
        (["--noise-multiplier", "nan"], ["'--noise-multiplier'", "finite"]),
        (["--max-grad-norm", "nan"], ["'--max-grad-norm'", "finite"]),
        (["--max-grad-norm", "inf"], ["'--max-grad-norm'", "infinite clip"]),
        (["--delta", "nan"], ["'--delta'", "finite"]),
        (["--lora-alpha", "inf"], ["'--lora-alpha'", "finite"]),
        (["--lora-dropout", "nan"], ["'--lora-dropout'", "finite"]),
        (["--eval-fraction", "1"], ["'--eval-fraction'", "less than 1"]),
        (["--eval-fraction", "nan"], ["'--eval-fraction'", "finite"]),
    ],
)
def test_every_numeric_option_is_finite_and_in_range(site, capsys, args, names):
    refused(site, capsys, args, code=2, names=names)


# Python hands command-line bytes that are not UTF-8 (here 0xff) to the program as lone surrogates.
@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--labels", "neg\udcffative,positive"),
        ("--text-column", "te\udcffxt"),
        ("--label-column", "la\udcffbel"),
        ("--model", "mo\udcffdel"),
    ],
)
def test_text_options_must_be_utf8(site, capsys, option, value):
    refused(site, capsys, [option, value], code=2, names=[f"'{option}'", "valid UTF-8", "byte 0xff"])


def test_labels_that_match_the_data_must_still_be_utf8(site, capsys):
    # Integer labels resolve against any two names: only the name itself is wrong, and it would reach the ledger.
    data = write_jsonl(site.root / "ints.jsonl", [{"text": r["text"], "label": i % 2} for i, r in enumerate(_rows())])
    refused(site, capsys, ["--data", str(data), "--labels", "neg\udcff,pos"], code=2, names=["'--labels'", "UTF-8"])


@pytest.mark.parametrize("option", ["--data", "--eval-data"])
def test_data_paths_must_be_utf8(site, capsys, option):
    path = site.root / "s\udcffample.jsonl"  # a file name with the byte 0xff
    shutil.copy(site.data, path)
    refused(site, capsys, [option, str(path)], code=2, names=[f"'{option}'", "valid UTF-8"])


@pytest.fixture
def fifo(tmp_path: Path):
    """A FIFO nobody writes to. Should a reader block on it, a writer comes and goes after 60 s: the reader sees
    end-of-file and the test fails instead of hanging."""
    path = tmp_path / "fifo.jsonl"
    os.mkfifo(path)

    def unblock() -> None:
        with contextlib.suppress(OSError):  # ENXIO: no reader is blocked, nothing to do
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))

    timer = threading.Timer(60, unblock)
    timer.daemon = True
    timer.start()
    yield path
    timer.cancel()


@pytest.mark.parametrize("option", ["--data", "--eval-data"])
@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("directory", "this is a directory, not a regular file"),
        ("fifo", "this is a FIFO (named pipe), not a regular file"),
        ("dev-zero", "this is a character device, not a regular file"),
        ("proc-mem", "cannot read the file: Input/output error"),
        ("missing", "no such file"),
    ],
)
def test_data_must_be_a_readable_regular_file(site, capsys, request, option, kind, reason):
    if kind == "directory":
        path = site.root / "dir.jsonl"
        path.mkdir()
    elif kind == "fifo":
        path = request.getfixturevalue("fifo")
    elif kind == "dev-zero":
        path = Path("/dev/zero")
    elif kind == "proc-mem":
        if not Path("/proc/self/mem").exists():
            pytest.skip("needs Linux /proc")
        path = Path("/proc/self/mem")
    else:
        path = site.root / "absent.jsonl"
    err = refused(site, capsys, [option, str(path), "--format", "jsonl"], code=65, names=[reason])
    assert err == f"error: {path}: {reason}"


def test_data_without_read_permission(site, capsys, monkeypatch):
    real_open = os.open

    def refuse(target, *args, **kwargs):  # root reads everything: deny the way the OS would
        if Path(target) == site.data:
            raise PermissionError(13, "Permission denied", str(target))
        return real_open(target, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    refused(site, capsys, [], code=65, names=[f"{site.data}: cannot open the file: Permission denied"])


def test_labels_sidecar_must_be_a_regular_file(site, capsys):
    (site.root / "labels.json").mkdir()
    refused(site, capsys, [], code=65, names=["labels.json: this is a directory, not a regular file"])


def _out_case(site: Site, kind: str) -> Path:
    if kind == "under-a-file":
        (site.root / "file").write_text("x")
        return site.root / "file" / "out"
    if kind == "a-file":
        (site.root / "file").write_text("x")
        return site.root / "file"
    if kind == "not-empty":
        (site.root / "full").mkdir()
        (site.root / "full" / "old.txt").write_text("x")
        return site.root / "full"
    return Path("/proc/fedtune-test-out")


@pytest.mark.parametrize(
    ("kind", "rule"),
    [
        ("under-a-file", "cannot create or write the output directory (Not a directory)"),
        ("proc", "cannot create or write the output directory"),
        ("a-file", "exists and is not a directory"),
        ("not-empty", "exists and is not empty"),
    ],
)
def test_out_must_be_a_new_or_empty_writable_directory(site, capsys, kind, rule):
    if kind == "proc" and not Path("/proc/self").exists():
        pytest.skip("needs Linux /proc")
    out = _out_case(site, kind)
    before = _files(site.root)
    refused(site, capsys, ["--out", str(out)], code=2, names=[f"--out {out}: ", rule])
    assert _files(site.root) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_out_in_a_read_only_directory(site, capsys):
    locked = site.root / "locked"
    locked.mkdir(mode=0o555)
    refused(site, capsys, ["--out", str(locked / "out")], code=2, names=["--out", "Permission denied"])


@pytest.mark.parametrize(
    ("kind", "rule"),
    [
        ("under-a-file", "cannot create or write the ledger here (Not a directory)"),
        ("proc", "cannot create or write the ledger here"),
        ("directory", "this is a directory, not a regular file"),
        ("device", "this is a character device, not a regular file"),
    ],
)
def test_ledger_location_must_take_a_ledger(site, capsys, kind, rule):
    if kind == "proc" and not Path("/proc/self").exists():
        pytest.skip("needs Linux /proc")
    (site.root / "file").write_text("x")
    (site.root / "dir").mkdir()
    ledger = {
        "under-a-file": site.root / "file" / "ledger.jsonl",
        "proc": Path("/proc/fedtune-test/ledger.jsonl"),
        "directory": site.root / "dir",
        "device": Path("/dev/null"),
    }[kind]
    before = _files(site.root)
    refused(site, capsys, ["--ledger", str(ledger)], code=2, names=[f"--ledger {ledger}: ", rule])
    assert _files(site.root) == before and not any((site.root / "dir").iterdir())


def test_missing_ledger_directories_are_not_left_behind(site, capsys):
    ledger = site.root / "new" / "deeper" / "ledger.jsonl"
    refused(site, capsys, ["--ledger", str(ledger), "--lora-dropout", "nan"], code=2, names=["'--lora-dropout'"])
    refused(site, capsys, ["--ledger", str(ledger), "--data", str(site.root / "absent.jsonl")], code=65, names=[])
    assert not (site.root / "new").exists()


@pytest.mark.parametrize(
    ("kind", "rule"),
    [
        ("device", "this is a character device, not a regular file"),
        ("directory", "this is a directory, not a regular file"),
        ("missing", "no such file"),
        ("garbage", "not an unencrypted PEM private key"),
    ],
)
def test_signing_key_must_load(site, capsys, kind, rule):
    key = {
        "device": Path("/dev/zero"),
        "directory": site.root,
        "missing": site.root / "absent.pem",
        "garbage": site.root / "garbage.pem",
    }[kind]
    if kind == "garbage":
        key.write_text("not a key\n")
    refused(site, capsys, ["--signing-key", str(key)], code=5, names=[str(key), rule])


def test_max_length_beyond_what_the_model_takes(site, capsys):
    # The tiny model has 128 positions; texts of several hundred tokens, kept whole by --max-length 1000, would
    # break the first training step, after the reservation.
    data = write_jsonl(site.root / "long.jsonl", _rows(repeat=30))
    config = json.loads((site.model / "config.json").read_text())
    assert config["max_position_embeddings"] == 128
    refused(
        site,
        capsys,
        ["--data", str(data), "--max-length", "1000"],
        code=1,
        names=["the model fails on an input of", "(--max-length 1000)"],
    )


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--precision", "fp16"], ["--precision fp16", "loss scaling", "--precision bf16"]),
        (["--precision", "half"], ["'--precision'"]),
        (["--gradient-checkpointing"], ["--gradient-checkpointing", "--task generate"]),
    ],
)
def test_precision_and_checkpointing_are_checked_before_any_spend(site, capsys, args, names):
    refused(site, capsys, args, code=2, names=names)
