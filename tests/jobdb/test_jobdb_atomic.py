"""Atomic writes: the old file or the new one, never half of either."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from jobdb_helpers import subprocess_env

from parallelaverage.jobdb import CorruptFileError, atomic_write_bytes, atomic_write_json, read_json
from parallelaverage._atomic import TEMP_MARKER


def leftovers(folder):
    return [name for name in os.listdir(folder) if TEMP_MARKER in name]


def test_round_trip_is_readable_json_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "data.json"
    atomic_write_json(target, {"b": 1, "a": [1, 2.5, None], "é": "ü"})
    text = target.read_text(encoding="utf-8")
    assert text.startswith('{\n  "a": [') and text.endswith("}\n")  # indented, sorted keys
    assert read_json(target) == {"a": [1, 2.5, None], "b": 1, "é": "ü"}
    atomic_write_json(target, {"new": True})
    assert read_json(target) == {"new": True}
    assert leftovers(tmp_path) == []


def test_a_writer_that_fails_mid_write_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "data.json"
    atomic_write_json(target, {"version": "old"})
    before = target.read_bytes()
    real_write = os.write

    def write_half_then_fail(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", write_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_json(target, {"version": "new", "pad": "x" * 10_000})
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_a_failing_fsync_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "blob"
    atomic_write_bytes(target, b"old")

    def broken_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="Input/output error"):
        atomic_write_bytes(target, b"new content")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_data_that_is_not_json_writes_nothing(tmp_path):
    target = tmp_path / "data.json"
    with pytest.raises(TypeError, match="cannot write .*data.json as JSON"):
        atomic_write_json(target, {"f": object()})
    with pytest.raises(ValueError, match="Out of range float"):
        atomic_write_json(target, {"x": float("nan")})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "the file is empty"),
        (b'{"a": 1,', "not valid JSON: Expecting property name enclosed in double quotes (line 1, column 9)"),
        (b"\xff\xfe{}", "not UTF-8 text"),
    ],
    ids=["empty", "truncated", "binary"],
)
def test_read_json_names_the_corrupt_file(tmp_path, content, reason):
    target = tmp_path / "broken.json"
    target.write_bytes(content)
    with pytest.raises(CorruptFileError) as info:
        read_json(target)
    assert info.value.path == str(target)
    assert reason in info.value.reason
    assert str(target) in str(info.value) and "left this file untouched" in str(info.value)
    assert isinstance(info.value, ValueError)
    assert target.read_bytes() == content


def test_read_json_of_a_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "absent.json")


_WRITER = """
import sys
from parallelaverage.jobdb import atomic_write_json
target = sys.argv[1]
i = 0
print("ready", flush=True)
while True:
    i += 1
    atomic_write_json(target, {"i": i, "pad": "x" * 400_000})
"""


@pytest.mark.parametrize("repeat", range(4))
def test_sigkill_during_writes_never_leaves_a_half_file(tmp_path, repeat):
    target = tmp_path / "data.json"
    atomic_write_json(target, {"i": 0, "pad": "x" * 400_000})
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(target)], env=subprocess_env(), stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(0.05 + 0.037 * repeat)  # land at different points of the write cycle
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
    data = json.loads(target.read_text())
    assert data["i"] >= 0 and data["pad"] == "x" * 400_000
    # A killed writer may leave its temporary file, named after its host and pid.
    for name in leftovers(tmp_path):
        assert f"-{writer.pid}-" in name
