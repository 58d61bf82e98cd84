"""tllm_sched/files.py: inputs read within limits, outputs written whole.

Inputs: `open_input` refuses what is not a regular file before opening it (a FIFO with no writer
would block, /dev/zero or /dev/urandom never end) and a file larger than the limit its kind names
below, so a bad path costs nothing and gets one line.

Outputs: `check_output_file` and `check_output_dir` probe a destination before a run starts (a
temporary file is created in the directory and removed), so a long run never loses its results
to a path it could not have written; `AtomicFile` writes to a temporary file beside the
destination and renames it into place only on `commit`, so a failed, interrupted or refused run
leaves the previous file as it was.

Every problem is a `FileProblem` (a ValueError) whose message is one line naming the path.
"""

from __future__ import annotations

import os
import stat
import tempfile
from typing import IO, Optional

__all__ = ["FileProblem", "SCENARIO_MAX_BYTES", "TRACE_MAX_BYTES", "TRACE_MAX_LINE_BYTES", "AtomicFile",
           "check_output_dir", "check_output_file", "open_input"]

# Size limits of what is read, per kind of input.
SCENARIO_MAX_BYTES = 64 << 20  # a scenario (decoded whole): 16M-token prompts fit, gigabytes do not
TRACE_MAX_BYTES = 1 << 30  # a request trace (read line by line; the real ones are a few MB)
TRACE_MAX_LINE_BYTES = 1 << 20  # one trace line: the longest prompt's Mooncake line is ~0.7 MB


class FileProblem(ValueError):
    """A path that cannot be read or written as asked: one line, starting with the path."""

    def __init__(self, path: "str | os.PathLike[str]", what: str) -> None:
        self.what = " ".join(what.split())  # the message without the path
        super().__init__(f"{os.fsdecode(path)}: {self.what}")


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _reason(e: OSError) -> str:
    return e.strerror or str(e)


def open_input(path: "str | os.PathLike[str]", limit: int, what: str) -> IO[bytes]:
    """`path` opened for binary reading, after checking that it is a regular file of at most
    `limit` bytes (`what` names the kind of input in the message)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise FileProblem(path, f"cannot read the {what}: {_reason(e)}") from None
    if not stat.S_ISREG(st.st_mode):
        raise FileProblem(path, f"cannot read the {what}: {_kind(st.st_mode)}, not a regular file")
    if st.st_size > limit:
        raise FileProblem(path, f"the {what} is {st.st_size:,} bytes, over the limit of {limit:,} bytes")
    try:
        f = open(path, "rb")
    except OSError as e:
        raise FileProblem(path, f"cannot read the {what}: {_reason(e)}") from None
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # replaced between the stat and the open
        f.close()
        raise FileProblem(path, f"cannot read the {what}: not a regular file")
    return f


def _probe_dir(directory: str, path: "str | os.PathLike[str]") -> None:
    """A temporary file can be created (and is removed) in `directory`, else FileProblem on `path`."""
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tllm-sched-probe-")
    except OSError as e:
        raise FileProblem(path, f"cannot write there: {_reason(e)}") from None
    os.close(fd)
    os.unlink(tmp)


def check_output_file(path: "str | os.PathLike[str]") -> None:
    """`path` can be replaced by a new regular file: it is one or does not exist, and its
    directory exists and takes new files. FileProblem otherwise."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:  # a component is a file (ENOTDIR), a loop, no permission
        raise FileProblem(path, f"cannot write there: {_reason(e)}") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise FileProblem(path, f"cannot write there: {_kind(st.st_mode)}, not a regular file")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileProblem(path, f"cannot write there: the directory {directory} does not exist")
    _probe_dir(directory, path)


def check_output_dir(path: "str | os.PathLike[str]") -> None:
    """`path` is a directory that takes new files, or can be made one (its nearest existing
    ancestor is a directory that takes new entries). Nothing is created. FileProblem otherwise."""
    probe = os.path.abspath(path)
    while True:
        try:
            st = os.stat(probe)
            break
        except FileNotFoundError:
            parent = os.path.dirname(probe)
            if parent == probe:
                raise FileProblem(path, "cannot write there: no existing directory above it") from None
            probe = parent
        except OSError as e:
            raise FileProblem(path, f"cannot write there: {_reason(e)}") from None
    if not stat.S_ISDIR(st.st_mode):
        where = "it is" if probe == os.path.abspath(path) else f"{probe} is"
        raise FileProblem(path, f"cannot write there: {where} {_kind(st.st_mode)}, not a directory")
    _probe_dir(probe, path)


class AtomicFile:
    """A new version of `path`, written to a temporary file in the same directory and renamed
    into place by `commit`; closed and removed, the old version untouched, otherwise (leaving the
    `with` block without commit, or `discard`). The directory must exist."""

    def __init__(self, path: "str | os.PathLike[str]", binary: bool = False) -> None:
        self.path = os.fspath(path)
        directory, name = os.path.split(os.path.abspath(self.path))
        try:
            fd, self._tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
        except OSError as e:
            raise FileProblem(path, f"cannot write there: {_reason(e)}") from None
        self.file: Optional[IO] = os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8")

    def __enter__(self) -> "AtomicFile":
        return self

    def __exit__(self, *exc) -> None:
        self.discard()

    def finish(self) -> None:
        """Flushes the data to disk and closes the file, ready to commit: OSError (after
        discarding) when the data cannot be written, a full disk say. Several files finished first
        and committed after are all replaced, or (nearly) none."""
        f = self.file
        if f is None or f.closed:
            return
        try:
            f.flush()
            os.fsync(f.fileno())  # a full disk shows here at the latest, never after the rename
            f.close()
        except BaseException:
            self.discard()
            raise

    def commit(self) -> None:
        """`finish`, then renames the file into place."""
        self.finish()
        try:
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(self._tmp, 0o666 & ~mask)  # as open() would create it, not mkstemp's 0600
            os.replace(self._tmp, self.path)
        except BaseException:
            self.discard()
            raise
        self.file = None

    def discard(self) -> None:
        """Closes and removes the temporary file (nothing after a commit)."""
        if self.file is None:
            return
        try:
            self.file.close()
        except OSError:
            pass  # the data is being thrown away; a failed flush does not matter
        self.file = None
        try:
            os.unlink(self._tmp)
        except OSError:
            pass
