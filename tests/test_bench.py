"""tests/test_bench.py: `tllm-sched bench` (tllm_sched/bench.py, bench_workloads.py, bench_report.py).

Fast: tiny synthetic runs on cpp, the JSON format, the retired --compare, and the
trace paths (error exit status, small crafted traces, a few requests of the real ones).
"""

import json
from pathlib import Path

import pytest

from tllm_sched import bench, bench_report
from tllm_sched import bench_workloads as wl

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MOONCAKE = DATA / "mooncake_conversation_trace.jsonl"
AZURE = DATA / "azure_llm_inference_2023_conv.csv"
TINY = ["--active", "8,16", "--steps", "5", "--warmup", "2", "--no-progress"]


def _run(tmp_path, *argv, plot=False):
    return bench.main([*argv, "--out", str(tmp_path / "out")] + ([] if plot else ["--no-plot"]))


def _doc(tmp_path):
    return json.loads((tmp_path / "out" / "results.json").read_text())


# ------------------------------------------------------------------------- synthetic runs


def test_results_json_format(tmp_path, capsys):
    assert _run(tmp_path, "--backends", "cpp", *TINY, plot=True) == 0
    doc = _doc(tmp_path)
    assert doc["format"] == "tllm_sched.bench/1" and doc["kind"] == "synthetic"
    for key in ("python", "numpy", "tllm_sched", "cpu", "cpu_count", "platform"):
        assert key in doc["machine"]
    assert doc["config"]["active"] == [8, 16] and doc["config"]["steps"] == 5
    cells = {(r["workload"], r["policy"], r["n_active"]) for r in doc["results"]}
    assert cells == {(w, p, n) for w in wl.WORKLOADS for p in wl.POLICIES for n in (8, 16)}
    for r in doc["results"]:
        assert all(k in r for k in bench_report.REQUIRED)
        assert r["backend"] == "cpp" and r["steps"] == 5
        assert 0 < r["median_us"] <= r["p99_us"] <= r["max_us"]
        assert r["crossings_per_step"] == 1.0  # one StepScheduler call
        assert r["ratio_to_cpp"] == 1.0
        assert r["us_per_request"] == pytest.approx(r["median_us"] / r["n_active"])
        assert r["exec_median_us"] > 0
    decode = [r for r in doc["results"] if r["workload"] == "decode"]
    assert all(r["mean_batch"] == r["n_active"] and r["finished_per_step"] == 0 for r in decode)
    out = capsys.readouterr().out
    assert "median_us" in out and "cross/step" in out and "wrote" in out
    assert (tmp_path / "out" / "report.md").read_text().startswith("# tllm_sched benchmark (synthetic)")
    has_mpl = doc["machine"]["matplotlib"] is not None
    assert (tmp_path / "out" / "report.png").exists() == has_mpl


def test_quick_smoke_cpp(tmp_path):
    assert _run(tmp_path, "--quick", "--backends", "cpp", "--active", "8", "--steps", "4", "--no-progress") == 0
    doc = _doc(tmp_path)
    assert doc["config"]["quick"] is True and len(doc["results"]) == 4


def test_quick_defaults_and_explicit_options():
    args = bench._parser().parse_args(["--quick"])
    bench._resolve(args)
    assert (args.active, args.steps, args.warmup) == (bench.QUICK["active"], 100, 5)
    args = bench._parser().parse_args(["--quick", "--steps", "7", "--policies", "mu,GNE"])
    bench._resolve(args)
    assert args.steps == 7 and args.policies == ["MAX_UTILIZATION", "GUARANTEED_NO_EVICT"]
    args = bench._parser().parse_args([])
    bench._resolve(args)
    assert args.active == [64, 256, 1024, 4096] and args.workloads == ["decode", "mixed"]


def test_all_backends_make_identical_decisions(tmp_path, capsys):
    """Every available backend runs interleaved; unavailable ones are skipped with a notice."""
    assert _run(tmp_path, "--workloads", "mixed", "--active", "12", "--steps", "30", "--warmup", "3",
                "--no-progress") == 0
    doc = _doc(tmp_path)
    backends = {r["backend"] for r in doc["results"]}
    assert "cpp" in backends
    err = capsys.readouterr().err
    for b in ("python", "python-naive"):
        assert (b in backends) != (f"backend {b} unavailable" in err)
    if len(backends) > 1:
        assert all(r["decisions_match"] is True for r in doc["results"])


def test_naive_steps_rule():
    assert wl.naive_steps(1000, 64) == 1000 and wl.naive_steps(1000, 512) == 1000
    assert wl.naive_steps(1000, 1024) == 500 and wl.naive_steps(1000, 4096) == 125
    assert wl.naive_steps(100, 4096) == 50 and wl.naive_steps(10, 4096) == 10


@pytest.mark.parametrize("argv", [["--workloads", "prefill"], ["--policies", "FIFO"], ["--backends", "rust"],
                                  ["--active", "0"], ["--steps", "x"], ["--current", "x.json"]])
def test_bad_options_exit_2(tmp_path, argv, capsys):
    assert _run(tmp_path, *argv) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_help_exits_0(capsys):
    assert bench.main(["--help"]) == 0
    assert "--trace" in capsys.readouterr().out


def test_progress_silent_off_a_terminal(tmp_path, capsys):
    assert _run(tmp_path, "--backends", "cpp", "--workloads", "decode", "--policies", "GNE", "--active", "8",
                "--steps", "3") == 0
    assert capsys.readouterr().err == ""


def test_format_table():
    rows = [dict(workload="decode", policy="MAX_UTILIZATION", n_active=64, backend="python", steps=10,
                 median_us=12.5, p99_us=20.0, us_per_request=0.2, crossings_per_step=None, ratio_to_cpp=2.5,
                 exec_median_us=3.0)]
    text = bench_report.format_table(rows)
    assert text.splitlines()[0].split()[:4] == ["workload", "policy", "N", "backend"]
    assert "MU" in text and "n/a" in text and "2.50" in text


# --------------------------------------------------------------------------------- compare


def test_compare_is_gone_with_a_pointer_to_the_gate(tmp_path, capsys):
    assert bench.main(["--compare", str(tmp_path / "base.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "tllm-sched gate check" in err


# ------------------------------------------------------------------------------- traces


def _mooncake_file(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_trace_malformed_exit_2_one_line(tmp_path, capsys):
    bad = _mooncake_file(tmp_path / "bad.jsonl", [{"timestamp": 0, "input_length": 10, "output_length": 5,
                                                   "hash_ids": [1]}])
    with open(bad, "a") as f:
        f.write('{"timestamp": 5, "input_length": 10}\n')
    assert _run(tmp_path, "--trace", bad, "--backends", "cpp") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{bad}:2:" in err and "missing key" in err


@pytest.mark.parametrize("content", ["TIMESTAMP,Context,Generated\n", "hello\n", ""])
def test_trace_unreadable_formats_exit_2(tmp_path, content, capsys):
    f = tmp_path / "t.csv"
    f.write_text(content)
    assert _run(tmp_path, "--trace", str(f)) == 2
    assert f"{f}:1:" in capsys.readouterr().err


def test_trace_missing_file_exit_2(tmp_path, capsys):
    assert _run(tmp_path, "--trace", str(tmp_path / "nope.jsonl")) == 2
    assert "nope.jsonl" in capsys.readouterr().err


def test_trace_crafted_mooncake_reuses_prefixes(tmp_path):
    rows = [{"timestamp": 40 * i, "input_length": 1100, "output_length": 20, "hash_ids": [7, 8, 100 + i]}
            for i in range(12)]
    f = _mooncake_file(tmp_path / "m.jsonl", rows)
    assert _run(tmp_path, "--trace", f, "--backends", "cpp", "--num-blocks", "512", "--no-progress") == 0
    doc = _doc(tmp_path)
    assert doc["kind"] == "trace" and doc["trace"]["format"] == "mooncake" and doc["trace"]["requests"] == 12
    (r,) = doc["results"]
    assert all(k in r for k in bench_report.REQUIRED)
    assert r["workload"] == "trace:mooncake" and r["requests_done"] == 12 and not r["truncated"]
    assert r["reuse_hit_rate"] > 0.5  # 16 of every 18 blocks (64-token) are the shared prefix 7, 8
    assert 0 < r["kv_util_max"] <= 1 and r["in_flight_max"] >= 1
    assert set(doc["series"]["cpp"]) >= {"time_s", "sched_median_us", "in_flight", "queued", "kv_util"}


def test_trace_max_steps_truncates(tmp_path, capsys):
    rows = [{"timestamp": 0, "input_length": 600, "output_length": 50, "hash_ids": [i, 1000 + i]} for i in range(4)]
    f = _mooncake_file(tmp_path / "m.jsonl", rows)
    assert _run(tmp_path, "--trace", f, "--backends", "cpp", "--max-steps", "10", "--no-progress") == 0
    (r,) = _doc(tmp_path)["results"]
    assert r["truncated"] and r["steps"] == 10 and r["requests_done"] == 0
    assert "TRUNCATED" in capsys.readouterr().out


def test_trace_request_larger_than_cache_exit_3(tmp_path, capsys):
    f = _mooncake_file(tmp_path / "m.jsonl", [{"timestamp": 0, "input_length": 5000, "output_length": 10,
                                                "hash_ids": list(range(10))}])
    assert _run(tmp_path, "--trace", f, "--backends", "cpp", "--num-blocks", "20") == 3
    assert "--num-blocks" in capsys.readouterr().err


@pytest.mark.parametrize("path", [MOONCAKE, AZURE], ids=["mooncake", "azure"])
def test_trace_real_files_first_requests(tmp_path, path):
    if not path.is_file():
        pytest.skip(f"shared trace not found: {path}")
    assert _run(tmp_path, "--trace", str(path), "--trace-limit", "25", "--backends", "cpp", "--no-progress") == 0
    doc = _doc(tmp_path)
    (r,) = doc["results"]
    assert r["requests_done"] == 25 and doc["trace"]["limit"] == 25
    assert r["steps"] > 0 and r["median_us"] > 0


def test_trace_default_limit_is_announced(tmp_path, capsys, monkeypatch):
    rows = [{"timestamp": i, "input_length": 30, "output_length": 2, "hash_ids": [i]} for i in range(5)]
    f = _mooncake_file(tmp_path / "m.jsonl", rows)
    monkeypatch.setitem(bench.TRACE_DEFAULT_LIMIT, "mooncake", 3)
    assert _run(tmp_path, "--trace", f, "--backends", "cpp", "--no-progress") == 0
    assert "first 3 requests by default" in capsys.readouterr().err
    assert _doc(tmp_path)["trace"]["requests"] == 3
    assert _run(tmp_path, "--trace", f, "--backends", "cpp", "--no-progress", "--trace-limit", "0") == 0
    assert _doc(tmp_path)["trace"]["requests"] == 5
