"""tests/test_cli.py: every failure of the command lines is one line with exit status 2 or 3 (130 when
interrupted), never a traceback, and no output file is touched unless the run ended.

In process where the exit path allows (`main`, as tests/utils.py `replay_cli` runs it); a
subprocess for the paths only a real process has: standard output full or closed, SIGINT, and one
real usage error. Hypothesis draws the families: out-of-range bench options.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tllm_sched import bench, traces
from tllm_sched.__main__ import main
from utils import replay_cli

SCENARIO = {
    "format": "tllm_sched.scenario/1",
    "scheduler": {"policy": "GUARANTEED_NO_EVICT", "max_num_requests": 4},
    "kv_cache": {"tokens_per_block": 10, "num_blocks": 10, "max_seq_len": 100},
    "requests": [{"id": 0, "prompt_len": 10, "max_new_tokens": 5}, {"id": 7, "prompt_len": 10, "max_new_tokens": 5}],
}


def _scenario(tmp_path: Path, obj=None) -> Path:
    p = tmp_path / "scenario.json"
    p.write_text(json.dumps(SCENARIO if obj is None else obj))
    return p


def _one_line(proc, code: int) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


# `-m` puts the cwd first on sys.path; from a checkout whose tllm_sched/ has no built extension that
# would shadow the installed package (Python >= 3.11 honours PYTHONSAFEPATH).
SAFE_ENV = dict(os.environ, PYTHONSAFEPATH="1")


def _subprocess(args, **kw):
    kw.setdefault("stdout", subprocess.PIPE)
    return subprocess.run([sys.executable, "-m", "tllm_sched", *map(str, args)], stderr=subprocess.PIPE, text=True,
                          timeout=120, env=SAFE_ENV, **kw)


# ----------------------------------------------------------------------------- replay outputs

@pytest.mark.parametrize("out,words", [
    (lambda d: d / "missing" / "log.jsonl", "does not exist"),
    (lambda d: d, "a directory, not a regular file"),
    (lambda d: "/dev/full", "a device, not a regular file"),
    (lambda d: "/proc/tllm-sched.jsonl", "cannot write there"),
])
def test_replay_out_that_cannot_be_written_exits_2_before_the_run(tmp_path, capsys, out, words):
    path = out(tmp_path)
    line = _one_line(replay_cli(capsys, _scenario(tmp_path), "--out", str(path)), 2)
    assert str(path) in line and words in line


def test_replay_refused_at_build_time_leaves_the_old_log(tmp_path, capsys):
    # A 16,777,216-token prompt + 5 new tokens passes validation but not the table's limit: exit 2
    # while building the run. The earlier log stays whole (it used to be truncated to 0 bytes).
    log = tmp_path / "log.jsonl"
    log.write_text("earlier log\n")
    big = dict(SCENARIO, kv_cache=None, requests=[{"id": 1, "prompt_len": 1 << 24, "max_new_tokens": 5}])
    line = _one_line(replay_cli(capsys, _scenario(tmp_path, big), "--out", str(log)), 2)
    assert "16777216 tokens per request" in line
    assert log.read_text() == "earlier log\n" and sorted(os.listdir(tmp_path)) == ["log.jsonl", "scenario.json"]


def test_replay_out_is_replaced_whole_when_the_run_ends(tmp_path, capsys):
    log = tmp_path / "log.jsonl"
    log.write_text("earlier log\n")
    proc = replay_cli(capsys, _scenario(tmp_path), "--out", str(log))
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == ""
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert lines[-1] == {"iterations": 5, "reused_blocks": 0, "missed_blocks": 0}


def test_replay_run_failure_with_out_writes_the_log_up_to_it(tmp_path, capsys):
    log = tmp_path / "log.jsonl"
    proc = replay_cli(capsys, _scenario(tmp_path, dict(SCENARIO, max_iterations=3)), "--out", str(log))
    assert "max_iterations" in _one_line(proc, 3)
    assert [json.loads(x)["it"] for x in log.read_text().splitlines()] == [0, 1, 2]


@pytest.mark.parametrize("make,words", [
    (lambda d: "/dev/zero", "a device, not a regular file"),
    (lambda d: (os.mkfifo(d / "fifo"), d / "fifo")[1], "a FIFO, not a regular file"),
    (lambda d: d, "a directory, not a regular file"),
])
def test_replay_refuses_inputs_that_never_end_or_block(tmp_path, capsys, make, words):
    line = _one_line(replay_cli(capsys, make(tmp_path)), 2)
    assert words in line


def test_an_oversize_scenario_is_refused_by_its_size_before_it_is_read(tmp_path, capsys):
    # 200 MB on paper (sparse): refused at once, naming the limit.
    p = tmp_path / "huge.json"
    with open(p, "wb") as f:
        f.truncate(200 << 20)
    t0 = time.process_time()
    line = _one_line(replay_cli(capsys, p), 2)
    assert time.process_time() - t0 < 5  # nothing was read (a loose bound: it takes milliseconds)
    assert "over the limit of 67,108,864 bytes" in line


def test_a_prompt_longer_than_a_request_can_hold_is_refused_before_its_tokens(monkeypatch):
    from tllm_sched import scenario

    monkeypatch.setattr(scenario, "MAX_REQUEST_TOKENS", 8)
    obj = dict(SCENARIO, kv_cache=None, requests=[{"id": 1, "prompt": [1] * 8 + ["not a token"], "max_new_tokens": 1}])
    with pytest.raises(scenario.ScenarioError, match=r"prompt is too long: 9 tokens, more than the limit of 8"):
        scenario.parse_scenario(obj)


def test_replay_stdout_full_exits_3_with_one_line(tmp_path):
    with open("/dev/full", "w") as full:
        proc = _subprocess(["replay", _scenario(tmp_path)], stdout=full)
    assert "cannot write the log to standard output: No space left on device" in _one_line(proc, 3)


def test_replay_stdout_closed_exits_2_with_one_line(tmp_path):
    # Closed before the interpreter starts (as `>&-` does), so sys.stdout is None.
    proc = _subprocess(["replay", _scenario(tmp_path)], stdout=None, preexec_fn=lambda: os.close(1))
    assert "standard output is closed; give --out FILE" in _one_line(proc, 2)


def test_replay_sigint_exits_130_with_one_line_and_keeps_the_old_log(tmp_path):
    # One request generating a million tokens: the run is still going when SIGINT arrives.
    log = tmp_path / "log.jsonl"
    log.write_text("earlier log\n")
    long = dict(SCENARIO, kv_cache=None, requests=[{"id": 0, "prompt_len": 4, "max_new_tokens": 1_000_000}],
                max_iterations=2_000_000)
    p = subprocess.Popen([sys.executable, "-m", "tllm_sched", "replay", str(_scenario(tmp_path, long)), "--out",
                          str(log)], stderr=subprocess.PIPE, text=True, env=SAFE_ENV)
    deadline = time.monotonic() + 60
    while not any(n.startswith(".log.jsonl.") for n in os.listdir(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.05)  # the run has begun once its scratch log exists
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and err.splitlines() == ["tllm-sched replay: interrupted"], err
    assert log.read_text() == "earlier log\n" and sorted(os.listdir(tmp_path)) == ["log.jsonl", "scenario.json"]


@pytest.mark.parametrize("argv,words", [
    ([], "the following arguments are required: command"),
    (["nope"], "invalid choice: 'nope'"),
    (["replay"], "the following arguments are required: scenario"),
    (["replay", "s.json", "--backend", "gpu"], "argument --backend: invalid choice: 'gpu'"),
    (["replay", "s.json", "--bogus"], "unrecognized arguments: --bogus"),
    (["bench", "--steps", "abc"], "argument --steps: not an integer: 'abc'"),
    (["bench", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_usage_errors_are_one_line(capsys, argv, words):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and words in err, err


def test_a_real_usage_error_is_one_line():
    assert "invalid choice: 'nope'" in _one_line(_subprocess(["nope"]), 2)


# ----------------------------------------------------------------------------- bench options

# (option, a value past its limit, words of the one line): each refused before anything runs.
OUT_OF_RANGE = [
    ("--active", "5000000", "active count must be at most 4,194,304"),
    ("--steps", "3000000000", "argument --steps: must be at most 10,000,000"),
    ("--warmup", "3000000000", "argument --warmup: must be at most 10,000,000"),
    ("--seed", "-1", "argument --seed: must be >= 0"),
    ("--num-blocks", "5000000", "argument --num-blocks: must be at most 4,194,304"),
    ("--tokens-per-block", "3000000000", "argument --tokens-per-block: must be at most 16,777,216"),
    ("--max-num-tokens", "3000000000", "argument --max-num-tokens: must be at most 2,147,483,647"),
    ("--max-num-requests", "0", "argument --max-num-requests: must be positive"),
    ("--step-base-ms", "nan", "argument --step-base-ms: must be a finite number of ms >= 0, got nan"),
    ("--step-base-ms", "-1", "argument --step-base-ms: must be a finite number of ms >= 0"),
    ("--step-token-ms", "inf", "argument --step-token-ms: must be a finite number of ms >= 0, got inf"),
    ("--prompt-length-sweep", "20000000", "prompt length must be at most 16,777,216"),
]


@pytest.mark.parametrize("option,value,words", OUT_OF_RANGE, ids=[f"{o}={v}" for o, v, _ in OUT_OF_RANGE])
def test_bench_options_out_of_range_exit_2(tmp_path, capsys, option, value, words):
    assert bench.main([option, value, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and words in err, err
    assert not (tmp_path / "out").exists()


@settings(max_examples=50, deadline=None)
@given(option=st.sampled_from(["--steps", "--warmup", "--max-steps", "--num-blocks", "--tokens-per-block",
                               "--max-num-requests", "--max-num-tokens", "--trace-limit", "--seed", "--active"]),
       value=st.one_of(st.integers(max_value=-1), st.integers(min_value=2**63), st.just("1.5"), st.just("")))
def test_bench_int_options_refuse_every_bad_value(option, value):
    with pytest.raises(SystemExit) as e:
        bench._parser().parse_args([option, str(value)])
    assert e.value.code == 2


@pytest.mark.parametrize("argv,words", [
    (["--workloads", "decode", "--active", "4096", "--steps", "50000"],
     "decode at 4,096 active with 20 + 50,000 steps: the KV cache would need 6,471,696 blocks, more than the limit "
     "of 4,194,304"),
    (["--prompt-length-sweep", "2000000"], "prompt-length sweep at 2,000,000 tokens: the KV cache would need"),
])
def test_bench_cases_beyond_the_core_limits_exit_2_before_running(tmp_path, capsys, argv, words):
    assert bench.main([*argv, "--backends", "cpp", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and words in err, err


@pytest.mark.parametrize("out,words", [
    (lambda d: (d / "f").write_text("x") and d / "f", "it is a regular file, not a directory"),
    (lambda d: "/dev/full", "it is a device, not a directory"),
    (lambda d: (d / "f").write_text("x") and d / "f" / "sub", "Not a directory"),
    (lambda d: "/proc/tllm-sched-bench", "cannot write there"),
])
def test_bench_out_is_checked_before_the_run(tmp_path, capsys, monkeypatch, out, words):
    ran = []
    monkeypatch.setattr(bench.wl, "run_synthetic_case", lambda *a: ran.append(a) or [])
    path = out(tmp_path)
    assert bench.main(["--quick", "--backends", "cpp", "--out", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and f"--out {path}: cannot write there" in err and words in err, err
    assert ran == []  # refused before any case ran


def test_bench_results_on_a_full_disk_exit_3_and_keep_the_old_files(tmp_path, capsys, monkeypatch):
    from tllm_sched import files

    out = tmp_path / "out"
    args = ["--workloads", "decode", "--policies", "GNE", "--active", "8", "--steps", "3", "--warmup", "2",
            "--backends", "cpp", "--no-plot", "--no-progress", "--out", str(out)]
    assert bench.main(args) == 0
    before = {n: (out / n).read_bytes() for n in os.listdir(out)}

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    capsys.readouterr()
    assert bench.main(args) == 3
    err = capsys.readouterr().err
    assert err.splitlines() == [f"tllm-sched bench: run failed: cannot write the results to {out}: No space left on device"]
    assert {n: (out / n).read_bytes() for n in os.listdir(out)} == before


# ----------------------------------------------------------------------------- traces

@pytest.mark.parametrize("make,words", [
    (lambda d: "/dev/urandom", "/dev/urandom:1: cannot read the trace: a device, not a regular file"),
    (lambda d: (os.mkfifo(d / "fifo"), d / "fifo")[1], "fifo:1: cannot read the trace: a FIFO, not a regular file"),
])
def test_bench_trace_refuses_inputs_that_never_end_or_block(tmp_path, capsys, make, words):
    assert bench.main(["--trace", str(make(tmp_path)), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and words in err, err


def test_a_trace_with_more_requests_than_a_table_holds_is_refused(tmp_path, monkeypatch):
    # The limit lowered from 4,194,304 to 3: the 4th row (line 5 after the header) is refused.
    monkeypatch.setattr(traces, "MAX_REQUESTS", 3)
    p = tmp_path / "azure.csv"
    p.write_text(traces.AZURE_HEADER + "\n" + "".join(f"2023-11-16 18:15:4{i}.0,10,5\n" for i in range(4)))
    with pytest.raises(traces.TraceError, match=r"azure.csv:5: more than 3 requests, the most a RequestTable holds"):
        traces.load_trace(p)
    assert len(traces.load_trace(p, limit=3)) == 3


def test_a_trace_request_longer_than_a_request_can_hold_is_refused(tmp_path):
    p = tmp_path / "azure.csv"
    p.write_text(traces.AZURE_HEADER + "\n2023-11-16 18:15:40.0,16777216,1\n")
    with pytest.raises(traces.TraceError, match=r":2: input \+ output length 16,777,217 exceeds the limit of "
                                                r"16,777,216 tokens per request"):
        traces.load_trace(p)


def test_a_trace_line_longer_than_the_limit_is_refused(tmp_path, monkeypatch):
    from tllm_sched import files

    monkeypatch.setattr(traces, "TRACE_MAX_LINE_BYTES", 64)
    p = tmp_path / "m.jsonl"
    p.write_text('{"timestamp": 0, "input_length": 1, "output_length": 1, "hash_ids": [' + "1, " * 40 + "1]}\n")
    with pytest.raises(traces.TraceError, match=r"m.jsonl:1: line longer than the limit of 64 bytes"):
        traces.load_trace(p)
    assert files.TRACE_MAX_LINE_BYTES == 1 << 20  # the module constant itself is untouched
