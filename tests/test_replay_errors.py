"""tests/test_replay_errors.py: `tllm-sched replay` on invalid scenarios (exit 2) and failed runs (exit 3).

design.md, "Replay scenarios": an invalid scenario is rejected before the
run starts with exit status 2, nothing on standard output and a one-line message on standard error
naming the key and the request id (no traceback). A run that starts but cannot go on exits with 3,
prints the log lines of the iterations that completed and no summary line, and one stderr line.
One case per exit status runs the real command in a subprocess (`_run_cli`); the others run
its `main` in this process (tests/utils.py `replay_cli`), which prints the same.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from utils import replay_cli


# A valid scenario every invalid one is derived from: two requests of 10 + 5 tokens; with 10-token
# blocks each needs 2 blocks, well within 10 blocks and max_seq_len 100.
BASE = {
    "format": "tllm_sched.scenario/1",
    "name": "errors",
    "harness": "full",
    "kv_cache": {"tokens_per_block": 10, "num_blocks": 10, "max_seq_len": 100},
    "scheduler": {"policy": "GUARANTEED_NO_EVICT", "max_num_requests": 4},
    "requests": [
        {"id": 0, "prompt_len": 10, "max_new_tokens": 5},
        {"id": 7, "prompt_len": 10, "max_new_tokens": 5},
    ],
}


def _command(path: Path):
    return [sys.executable, "-m", "tllm_sched", "replay", str(path), "--backend", "cpp"]


def _run_cli(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(_command(path), cwd=path.parent, capture_output=True, text=True, timeout=60)


def _run_here(capsys, path: Path) -> subprocess.CompletedProcess:
    return replay_cli(capsys, path, "--backend", "cpp")


def _write(tmp_path: Path, obj=None, raw: str | None = None, name: str = "scenario.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(obj) if raw is None else raw, encoding="utf-8")
    return path


def _assert_one_line_error(proc: subprocess.CompletedProcess, code: int) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), f"expected exactly one stderr line, got {proc.stderr!r}"
    assert proc.stderr.endswith("\n")
    return lines[0]


def _mutated(edit) -> dict:
    obj = copy.deepcopy(BASE)
    edit(obj)
    return obj


def _set(path, value):
    """An edit setting obj[path[0]][path[1]]... = value."""
    def edit(obj):
        target = obj
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return edit


def test_base_scenario_is_valid(tmp_path, capsys):
    # Guards every case below: the only thing wrong with each is the edit it makes.
    proc = _run_here(capsys, _write(tmp_path, BASE))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.splitlines()[-1].startswith('{"iterations": ')


# (case id, edit, words the message must contain: the key, and the request id where relevant)
INVALID = [
    ("unknown_top_key", _set(["bogus_key"], 1), ["bogus_key"]),
    ("unknown_request_key", _set(["requests", 1, "colour"], "red"), ["colour", "id 7"]),
    ("unknown_kv_key", _set(["kv_cache", "block_size"], 10), ["block_size"]),
    ("float_not_int", _set(["requests", 1, "max_new_tokens"], 5.5), ["max_new_tokens", "id 7"]),
    ("bool_not_int", _set(["requests", 1, "max_new_tokens"], True), ["max_new_tokens", "id 7"]),
    ("integral_float_not_int", _set(["kv_cache", "tokens_per_block"], 10.0), ["tokens_per_block"]),
    ("string_not_int", _set(["kv_cache", "num_blocks"], "10"), ["num_blocks"]),
    ("string_not_bool", _set(["kv_cache", "enable_block_reuse"], "yes"), ["enable_block_reuse"]),
    ("missing_scheduler", lambda o: o.pop("scheduler"), ["scheduler"]),
    ("missing_max_new_tokens", lambda o: o["requests"][1].pop("max_new_tokens"), ["max_new_tokens", "id 7"]),
    ("duplicate_ids", _set(["requests", 1, "id"], 0), ["id", "id 0"]),
    ("zero_max_new_tokens", _set(["requests", 1, "max_new_tokens"], 0), ["max_new_tokens", "id 7"]),
    # 10 + 91 = 101 > max_seq_len 100.
    ("longer_than_max_seq_len", _set(["requests", 1, "max_new_tokens"], 91), ["max_new_tokens", "id 7"]),
    # 10 + 5 = 15 tokens need ceil(15/10) = 2 blocks > 1: both requests could never run; the
    # first one (id 0) is named.
    ("more_blocks_than_cache", _set(["kv_cache", "num_blocks"], 1), ["id 0", "num_blocks"]),
    ("beam_width_with_kv_cache", _set(["requests", 1, "beam_width"], 2), ["beam_width", "id 7"]),
    ("chunking_harness_without_chunking", _set(["harness"], "chunking"), ["chunking"]),
    ("unknown_policy", _set(["scheduler", "policy"], "ROUND_ROBIN"), ["policy"]),
    ("event_names_no_request",
     _set(["events"], [{"at": 0, "set_draft_tokens": {"ids": [3], "count": 1}}]), ["ids"]),
    ("event_with_empty_ids", _set(["events"], [{"at": 0, "set_draft_tokens": {"ids": [], "count": 1}}]), ["ids"]),
]


@pytest.mark.parametrize("edit,words", [pytest.param(e, w, id=i) for i, e, w in INVALID])
def test_invalid_scenario_exits_2(tmp_path, capsys, edit, words):
    proc = _run_here(capsys, _write(tmp_path, _mutated(edit)))
    line = _assert_one_line_error(proc, 2)
    assert proc.stdout == ""
    for word in words:
        assert word in line, f"{word!r} not named in {line!r}"


def test_bad_json_exits_2(tmp_path):
    # Exit 2 from the real command, in a subprocess.
    proc = _run_cli(_write(tmp_path, raw='{"format": "tllm_sched.scenario/1", "requests": [}'))
    line = _assert_one_line_error(proc, 2)
    assert proc.stdout == ""
    assert "JSON" in line and "scenario.json" in line


def test_missing_file_exits_2(tmp_path, capsys):
    missing = tmp_path / "does_not_exist.json"
    proc = _run_here(capsys, missing)
    line = _assert_one_line_error(proc, 2)
    assert proc.stdout == ""
    assert "does_not_exist.json" in line


# ----------------------------------------------------------------------------- run failures (exit 3)


def _log_lines(stdout: str):
    return [json.loads(line) for line in stdout.splitlines()]


def test_too_long_context_without_chunking_fails_the_run(tmp_path, capsys):
    # Micro harness, no chunking, max_context_length 15. Iteration 0: requests 0 and 7 (10 tokens
    # each) are scheduled as contexts. Request 9 (20 tokens) arrives at iteration 1, behind the two
    # generations, and 20 > 15 is a hard error (scheduler.md §3.2 step 3): exit 3 after one line.
    obj = copy.deepcopy(BASE)
    obj["harness"] = "micro"
    obj["kv_cache"] = None
    obj["scheduler"]["max_context_length"] = 15
    obj["requests"].append({"id": 9, "prompt_len": 20, "max_new_tokens": 3, "arrive_at": 1})
    proc = _run_here(capsys, _write(tmp_path, obj))
    line = _assert_one_line_error(proc, 3)
    lines = _log_lines(proc.stdout)
    assert [entry["it"] for entry in lines] == [0]
    assert lines[0]["context"] == [0, 7]
    assert "iterations" not in proc.stdout
    assert "9" in line and "max_context_length" in line


def test_max_iterations_too_small_fails_the_run(tmp_path):
    # GNE, two requests of 10 + 5 tokens: iteration 0 runs both contexts (one token each), then
    # four generation steps finish them at iteration 4, so a run needs 5 iterations. With
    # max_iterations 3, iterations 0..2 are logged and the run fails before iteration 3.
    obj = copy.deepcopy(BASE)
    obj["max_iterations"] = 3
    proc = _run_cli(_write(tmp_path, obj))  # exit 3 from the real command, in a subprocess
    line = _assert_one_line_error(proc, 3)
    lines = _log_lines(proc.stdout)
    assert [entry["it"] for entry in lines] == [0, 1, 2]
    assert all("iterations" not in entry for entry in lines)
    assert lines[-1]["finished"] == []
    assert "max_iterations" in line


def test_chunking_iteration_without_progress_fails_the_run(tmp_path, capsys):
    # Chunking harness, FCFS unit 5, capacity (max_num_tokens) 3: one 20-token request gets
    # min(3, 20) = 3 != 20 -> floor(3/5) * 5 = 0 tokens: no request advances at iteration 0 ->
    # run failure with no log line at all.
    obj = {
        "format": "tllm_sched.scenario/1", "harness": "chunking",
        "scheduler": {"policy": "GUARANTEED_NO_EVICT", "max_num_requests": 1, "max_num_tokens": 3,
                      "chunking": {"policy": "FIRST_COME_FIRST_SERVED", "unit_size": 5}},
        "requests": [{"id": 4, "prompt_len": 20, "max_new_tokens": 1}],
    }
    proc = _run_here(capsys, _write(tmp_path, obj))
    _assert_one_line_error(proc, 3)
    assert proc.stdout == ""


def test_max_iterations_exactly_enough_succeeds(tmp_path, capsys):
    # The boundary of the case above: 5 iterations are enough.
    obj = copy.deepcopy(BASE)
    obj["max_iterations"] = 5
    proc = _run_here(capsys, _write(tmp_path, obj))
    assert proc.returncode == 0, proc.stderr
    lines = _log_lines(proc.stdout)
    assert lines[-1] == {"iterations": 5, "reused_blocks": 0, "missed_blocks": 0}
    assert lines[-2]["finished"] == [0, 7]
