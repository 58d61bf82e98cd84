"""tests/test_files.py: tllm_sched/files.py, bounded reads and whole writes.

Inputs that are not regular files (a FIFO with no writer, a device that never ends, a directory)
are refused before they are opened; files over their kind's limit before they are read. An output
destination is probed before a run; `AtomicFile` replaces a file only on commit, and a failed
write (a full disk, simulated by a failing fsync) leaves the old file and no scratch file.
"""

from __future__ import annotations

import errno
import os

import pytest

from tllm_sched import files
from tllm_sched.files import AtomicFile, FileProblem, check_output_dir, check_output_file, open_input


def test_a_regular_file_within_the_limit_is_read(tmp_path):
    p = tmp_path / "in.txt"
    p.write_bytes(b"12345")
    with open_input(p, 5, "thing") as f:
        assert f.read() == b"12345"


@pytest.mark.parametrize("make,words", [
    (lambda d: (os.mkfifo(d / "fifo"), d / "fifo")[1], "a FIFO, not a regular file"),
    (lambda d: "/dev/zero", "a device, not a regular file"),
    (lambda d: "/dev/urandom", "a device, not a regular file"),
    (lambda d: d, "a directory, not a regular file"),
    (lambda d: d / "missing", "No such file or directory"),
])
def test_what_is_not_a_regular_file_is_refused_before_opening(tmp_path, make, words):
    path = make(tmp_path)  # a FIFO with no writer would block open() forever
    with pytest.raises(FileProblem) as e:
        open_input(path, 100, "scenario file")
    assert str(e.value) == f"{path}: cannot read the scenario file: {words}"


def test_a_file_over_the_limit_is_refused_by_its_size_on_disk(tmp_path):
    p = tmp_path / "big"
    with open(p, "wb") as f:
        f.truncate(200 << 20)  # sparse: 200 MB on paper, nothing read
    with pytest.raises(FileProblem, match=r"the trace is 209,715,200 bytes, over the limit of 1,024 bytes"):
        open_input(p, 1024, "trace")


@pytest.mark.parametrize("check,make,words", [
    (check_output_file, lambda d: d / "nodir" / "x", "the directory {d}/nodir does not exist"),
    (check_output_file, lambda d: d, "a directory, not a regular file"),
    (check_output_file, lambda d: "/dev/full", "a device, not a regular file"),
    (check_output_file, lambda d: (d / "f").write_text("x") and d / "f" / "x", "Not a directory"),
    (check_output_file, lambda d: "/proc/tllm-sched-out", "No such file or directory"),
    (check_output_dir, lambda d: (d / "f").write_text("x") and d / "f", "it is a regular file, not a directory"),
    (check_output_dir, lambda d: "/dev/full", "it is a device, not a directory"),
    (check_output_dir, lambda d: (d / "f").write_text("x") and d / "f" / "sub" / "deeper", "Not a directory"),
    (check_output_dir, lambda d: "/proc/tllm-sched-out", "No such file or directory"),
])
def test_output_destinations_that_cannot_be_written_are_refused(tmp_path, check, make, words):
    path = make(tmp_path)
    with pytest.raises(FileProblem) as e:
        check(path)
    assert str(e.value) == f"{path}: cannot write there: " + words.format(d=tmp_path)


def test_output_checks_accept_new_paths_and_create_nothing(tmp_path):
    check_output_file(tmp_path / "new.jsonl")
    check_output_dir(tmp_path / "a" / "b")
    assert os.listdir(tmp_path) == []  # the probes left nothing behind


def test_atomic_file_replaces_only_on_commit(tmp_path):
    p = tmp_path / "log"
    p.write_text("old")
    with AtomicFile(p) as f:
        f.file.write("new")
        assert p.read_text() == "old"
    assert p.read_text() == "old" and os.listdir(tmp_path) == ["log"]  # left without commit: discarded
    with AtomicFile(p) as f:
        f.file.write("new")
        f.commit()
    assert p.read_text() == "new" and os.listdir(tmp_path) == ["log"]
    assert (os.stat(p).st_mode & 0o777) == 0o666 & ~_umask()


def test_a_full_disk_leaves_the_old_file_and_no_scratch(tmp_path, monkeypatch):
    p = tmp_path / "results.json"
    p.write_text("good")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", full)
    f = AtomicFile(p)
    f.file.write("x" * 100)
    with pytest.raises(OSError, match="No space left on device"):
        f.commit()
    assert p.read_text() == "good" and os.listdir(tmp_path) == ["results.json"]


def test_an_interrupt_while_writing_leaves_the_old_file(tmp_path):
    p = tmp_path / "log"
    p.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with AtomicFile(p) as f:
            f.file.write("partial")
            raise KeyboardInterrupt
    assert p.read_text() == "old" and os.listdir(tmp_path) == ["log"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
