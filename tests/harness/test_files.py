"""Atomic writes and the cleaning of dead processes' temporaries (qaclip_harness.files)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest

from qaclip_harness import files
from qaclip_harness.files import OutputError, atomic_write_json, atomic_write_text, remove_stale_temporaries, temp_path


def test_a_write_replaces_the_whole_file(tmp_path):
    target = tmp_path / "sub" / "report.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "report.json"
    atomic_write_text(target, "old")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(OutputError, match=r"report.json: no space left on the device"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_a_file_size_limit_is_named(tmp_path):
    # ulimit -f in a child: the write dies half way, the target is untouched, the message says why
    code = (
        "import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024)); "
        "from qaclip_harness.files import atomic_write_bytes, OutputError\n"
        "try:\n    atomic_write_bytes(sys.argv[1], b'x' * 100000)\n"
        "except OutputError as e:\n    print(e)\n"
    )
    target = tmp_path / "big.bin"
    target.write_bytes(b"old")
    out = subprocess.run(
        [sys.executable, "-c", code, str(target)], capture_output=True, text=True, timeout=120, check=False
    )
    assert "file too large" in out.stdout, out.stdout + out.stderr
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["big.bin"]


def test_temporaries_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    dead_pid = int(dead.stdout)
    (tmp_path / f".export.{dead_pid}.tmpdir").mkdir()
    (tmp_path / f".golden.pt.{dead_pid}.tmp").write_bytes(b"partial")
    mine = temp_path(tmp_path / "report.json")
    mine.write_text("being written")
    (tmp_path / "keep.txt").write_text("not a temporary")
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == sorted([f".export.{dead_pid}.tmpdir", f".golden.pt.{dead_pid}.tmp"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, "keep.txt"])
    assert os.getpid() != dead_pid
