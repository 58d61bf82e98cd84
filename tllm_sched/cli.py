"""tllm_sched/cli.py: what the command lines (`tllm-sched replay`, `tllm-sched bench`) share.

Exit statuses: 0 success, 2 invalid input (one line on stderr, no traceback), 3 a run that started
but could not go on, 130 interrupted (SIGINT). A usage error is one line too: `ArgumentParser`
prints `PROG: error: MESSAGE` instead of argparse's usage block.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

__all__ = ["ArgumentParser", "INTERRUPTED", "INVALID", "RUN_FAILED", "silence_stdout"]

INVALID = 2  # invalid input
RUN_FAILED = 3  # a run that started but could not go on
INTERRUPTED = 130  # SIGINT (128 + 2), as a shell reports it


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a usage error on one line (`--help` still prints the whole usage). Its
    sub-parsers are of this class too (argparse makes them of the parent's class)."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {' '.join(message.split())}", file=sys.stderr)
        sys.exit(INVALID)


def silence_stdout() -> None:
    """Points standard output at /dev/null, dropping what is buffered, after a write to it failed
    (a reader gone, a full disk): the interpreter's final flush must not fail again and print a
    traceback."""
    try:
        fd = sys.stdout.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    except (AttributeError, OSError, ValueError):
        pass
