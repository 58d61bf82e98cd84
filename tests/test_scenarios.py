"""tests/test_scenarios.py: every replay scenario replays to its expected decision log, byte for byte.

The shared folder (`../shared/scenarios` beside the repository) holds `NAME.json` scenarios and
`NAME.expected.jsonl` logs (design.md, "The decision log"; pinned choice 9: every backend gives the same bytes).
tests/scenarios/ holds ours in the same format: the fused mode and the waiting queue, with logs
derived by hand from the rules.
Each scenario runs in-process once per backend of `BACKENDS`; one more test runs the command line
as a subprocess, as a user would.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from tllm_sched.replay import replay
from tllm_sched.scenario import load_scenario
from tllm_sched.scheduler import BACKENDS
from utils import SHARED

SCENARIO_DIR = SHARED / "scenarios"
OUR_SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
SCENARIO_FILES = sorted(SCENARIO_DIR.glob("*.json")) if SCENARIO_DIR.is_dir() else []
SCENARIO_FILES += sorted(OUR_SCENARIO_DIR.glob("*.json"))
_MISSING = pytest.param(None, marks=pytest.mark.skip(reason=f"shared scenarios folder not found: {SCENARIO_DIR}"))


def _expected_path(path: Path) -> Path:
    return path.with_name(path.stem + ".expected.jsonl")


def _first_difference(actual: str, expected: str) -> str:
    """A readable description of the first line where two logs differ."""
    got, want = actual.splitlines(keepends=True), expected.splitlines(keepends=True)
    for n, (g, w) in enumerate(zip(got, want), start=1):
        if g != w:
            return f"first difference at line {n}:\n  expected: {w!r}\n  actual:   {g!r}"
    if len(got) != len(want):
        n = min(len(got), len(want)) + 1
        extra = got[n - 1] if len(got) > len(want) else want[n - 1]
        who = "actual has an extra" if len(got) > len(want) else "actual is missing"
        return f"{who} line {n} ({len(got)} vs {len(want)} lines): {extra!r}"
    return "logs differ only in bytes that splitlines() hides (line endings?)"


def _assert_same_log(actual: str, expected: str, what: str) -> None:
    if actual != expected:
        pytest.fail(f"{what}: decision log differs from the expected log; " + _first_difference(actual, expected))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("path", SCENARIO_FILES or [_MISSING], ids=lambda p: p.stem if isinstance(p, Path) else "none")
def test_scenario_replays_to_expected_log(path: Path, backend: str) -> None:
    expected_file = _expected_path(path)
    if not expected_file.is_file():
        pytest.fail(f"{path.name} has no {expected_file.name} beside it")
    expected = expected_file.read_bytes().decode("utf-8")
    out = io.StringIO()
    replay(load_scenario(path), backend, out)
    _assert_same_log(out.getvalue(), expected, f"{path.stem} [{backend}]")


def test_expected_logs_end_with_a_summary_line() -> None:
    # Guards the comparison above against an empty or truncated expected file: the last line of
    # every log is the summary {"iterations", "reused_blocks", "missed_blocks"}.
    if not SCENARIO_FILES:
        pytest.skip(f"shared scenarios folder not found: {SCENARIO_DIR}")
    for path in SCENARIO_FILES:
        lines = _expected_path(path).read_text(encoding="utf-8").splitlines()
        assert lines and lines[-1].startswith('{"iterations": '), path.name


def test_cli_replay_matches_expected_log(tmp_path) -> None:
    path = SCENARIO_DIR / "microD04_SimpleNoOverlapMaxContextLength.json"
    if not path.is_file():
        pytest.skip(f"shared scenario not found: {path}")
    proc = subprocess.run(
        [sys.executable, "-m", "tllm_sched", "replay", str(path), "--backend", "cpp"],
        cwd=tmp_path, capture_output=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert proc.stderr == b""
    _assert_same_log(proc.stdout.decode("utf-8"), _expected_path(path).read_text(encoding="utf-8"), "CLI " + path.stem)
    assert proc.stdout == _expected_path(path).read_bytes()
