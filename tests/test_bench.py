"""tests/test_bench.py: `tllm-sched bench` (tllm_sched/bench.py, bench_workloads.py, bench_report.py).

Fast: tiny synthetic runs on cpp, the JSON format, the retired --compare, and the
trace paths (error exit status, small crafted traces, a few requests of the real ones).
"""

import json

import numpy as np
import pytest

from tllm_sched import bench, bench_report
from tllm_sched import bench_workloads as wl
from tllm_sched.scheduler import BACKENDS
from utils import SHARED

DATA = SHARED / "data"
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
        assert r["crossings_per_step"] == 1.0  # one _core.Scheduler call
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
    assert doc["config"]["quick"] is True and len(doc["results"]) == len(wl.WORKLOADS) * len(wl.POLICIES)


def test_quick_defaults_and_explicit_options():
    args = bench._parser().parse_args(["--quick"])
    bench._resolve(args)
    assert (args.active, args.steps, args.warmup) == (bench.QUICK["active"], 100, 5)
    args = bench._parser().parse_args(["--quick", "--steps", "7", "--policies", "mu,GNE"])
    bench._resolve(args)
    assert args.steps == 7 and args.policies == ["MAX_UTILIZATION", "GUARANTEED_NO_EVICT"]
    args = bench._parser().parse_args([])
    bench._resolve(args)
    assert args.active == [64, 256, 1024, 4096] and args.workloads == ["decode", "mixed", "reuse"]


def test_all_backends_make_identical_decisions(tmp_path, capsys):
    """Every available backend runs interleaved; unavailable ones are skipped with a notice."""
    assert _run(tmp_path, "--workloads", "mixed", "--active", "12", "--steps", "30", "--warmup", "3",
                "--no-progress") == 0
    doc = _doc(tmp_path)
    backends = {r["backend"] for r in doc["results"]}
    assert "cpp" in backends
    err = capsys.readouterr().err
    for b in BACKENDS[1:]:  # the backends besides the cpp reference
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


def test_trace_request_larger_than_cache_exit_2(tmp_path, capsys):
    # 5,010 tokens need ceil(5010 / 64) = 79 blocks of a 20-block cache: invalid input, refused
    # before the run (exit 2, one line), the output folder untouched.
    f = _mooncake_file(tmp_path / "m.jsonl", [{"timestamp": 0, "input_length": 5000, "output_length": 10,
                                                "hash_ids": list(range(10))}])
    assert _run(tmp_path, "--trace", f, "--backends", "cpp", "--num-blocks", "20") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "request 0 (0-based) needs 79 blocks of 64 tokens" in err and "--num-blocks" in err
    assert not (tmp_path / "out").exists()


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


# ------------------------------------------------------------------- the reuse workload


def _reuse_state(n_active, backend="cpp", policy="GUARANTEED_NO_EVICT", seed=0):
    case = wl.SyntheticCase("reuse", policy, n_active, steps=10, warmup=0, seed=seed)
    return wl._build_synthetic(case, backend, wl._pool(seed))


def test_reuse_prefill_reuses_exactly_the_family_prefixes():
    """Hand count: while the first requests are prefilled (in id order), a request whose family
    already had a member reuses that family's whole prefix (prefix_len / 32 blocks of 32 tokens:
    every prefix length is a multiple of 32) and nothing of its own suffix; a family's first
    member misses all its blocks."""
    n = 8
    st, src = _reuse_state(n)
    assert len(st.active) == n and len(src.drawn) == n
    prompt_len = st.table.columns()["prompt_len"]
    seen, reused, looked = set(), 0, 0
    for slot, (family, prefix) in zip(st.active.slots, src.drawn):
        assert prefix in wl.REUSE_PREFIX_LENGTHS
        looked += -(-int(prompt_len[slot]) // wl.TOKENS_PER_BLOCK)  # every block of the prompt is looked up
        if family in seen:
            reused += prefix // wl.TOKENS_PER_BLOCK
        seen.add(family)
    assert len(seen) < n  # some family has several members (2 live families)
    stats = st.kv.get_kv_cache_stats()
    assert stats["reused_blocks"] == reused > 0
    assert stats["reused_blocks"] + stats["missed_blocks"] == looked
    assert stats["cache_hit_rate"] == pytest.approx(reused / looked)


def test_reuse_prompts_are_family_prefix_then_own_tokens():
    pool = wl._pool(0)
    src = wl.FamilySource(pool, 3, 2, prefix_lengths=(64, 128), suffix=(5, 9), output=(4, 4), new_family=0.0)
    prompts = [src.draw() for _ in range(12)]
    by_family = {}
    for (p, m), (family, prefix) in zip(prompts, src.drawn):
        assert m == 4 and prefix in (64, 128) and 5 <= p.size - prefix <= 9
        by_family.setdefault(family, []).append((p, prefix))
    assert set(by_family) == {0, 1}  # no new family with new_family=0
    for members in by_family.values():
        (p0, prefix), rest = members[0], members[1:]
        for p, _ in rest:
            assert np.array_equal(p[:prefix], p0[:prefix])  # the family's prefix
            assert not np.array_equal(p[prefix:prefix + 5], p0[prefix:prefix + 5])  # then its own tokens
    a, b = (members[0] for members in by_family.values())
    assert not np.array_equal(a[0][:32], b[0][:32])  # families share nothing


def test_reuse_new_families_replace_live_ones():
    src = wl.FamilySource(wl._pool(0), 1, 4, new_family=1.0)
    for _ in range(5):
        src.draw()
    assert [f for f, _ in src.drawn] == [4, 5, 6, 7, 8]  # each draw opened a new family
    assert src.family.size == 4 and src.next_family == 9


def test_reuse_steady_state_is_deterministic_and_shares_prefixes(tmp_path):
    """A short run at N=64: arrivals replace finished requests (N stays constant), the cache hits
    and the same seed gives the same run."""
    docs = []
    for seed in (5, 5, 6):
        out = tmp_path / f"s{seed}-{len(docs)}"
        assert bench.main(["--backends", "cpp", "--workloads", "reuse", "--policies", "GNE", "--active", "64",
                           "--steps", "40", "--warmup", "2", "--seed", str(seed), "--no-progress", "--no-plot",
                           "--out", str(out)]) == 0
        docs.append(json.loads((out / "results.json").read_text())["results"][0])
    r = docs[0]
    assert r["workload"] == "reuse" and r["steps"] == 40
    assert r["reuse_hit_rate"] > 0.5 and r["finished_per_step"] > 0 and r["key_walks_per_step"] > 0
    assert 0 <= r["waiting_mean"] < 64 and r["mean_batch"] > 0
    same = ("mean_batch", "waiting_mean", "finished_per_step", "reuse_hit_rate", "key_walks_per_step")
    assert all(docs[1][k] == r[k] for k in same)
    assert any(docs[2][k] != r[k] for k in same)


def test_reuse_state_keeps_n_active():
    st = wl.build_synthetic_state("reuse", "MAX_UTILIZATION", 32, "cpp", warmup=30)
    assert len(st.active) == 32 and st.next_id > 32  # arrivals replaced finished requests
    assert st.kv.enable_block_reuse


def test_measured_and_warmup_steps_rules():
    case = lambda w, n: wl.SyntheticCase(w, "GUARANTEED_NO_EVICT", n, 1000, 20, 0)  # noqa: E731
    assert wl.measured_steps(case("reuse", 128), "cpp") == 1000
    assert wl.measured_steps(case("reuse", 256), "cpp") == 500
    assert wl.measured_steps(case("reuse", 1024), "cpp") == 125
    assert wl.measured_steps(case("reuse", 4096), "python") == 31
    assert wl.measured_steps(case("reuse", 65536), "python") == 30  # REUSE_MIN_STEPS
    assert wl.measured_steps(case("reuse", 4096), "python-naive") == 31  # naive_steps(31, 4096): no fewer
    assert wl.measured_steps(case("mixed", 4096), "cpp") == 1000
    assert wl.measured_steps(case("mixed", 4096), "python-naive") == 125
    assert wl.measured_steps(wl.SyntheticCase("reuse", "MAX_UTILIZATION", 4096, 10, 1, 0), "cpp") == 10
    assert [wl.warmup_steps(case("reuse", n)) for n in (64, 256, 512, 1024, 4096)] == [20, 20, 10, 5, 5]
    assert wl.warmup_steps(case("decode", 4096)) == 20
    assert wl.warmup_steps(wl.SyntheticCase("reuse", "MAX_UTILIZATION", 4096, 10, 2, 0)) == 2


# ---------------------------------------------------------------------- stats, checksums


def test_timing_stats_hand_computed():
    wall = np.array([1000, 2000, 3000, 4000, 100_000], dtype=np.int64)
    cpu = np.array([500, 1500, 2500, 3500, 4500], dtype=np.int64)
    s = wl.timing_stats(wall, cpu)
    # p99 interpolates linearly at index 0.99 * 4 = 3.96 between the 4th and 5th smallest.
    assert s["median_us"] == 3.0 and s["p99_us"] == pytest.approx(4.0 + 0.96 * 96.0)
    assert s["mean_us"] == 22.0 and s["min_us"] == 1.0 and s["max_us"] == 100.0
    assert s["total_s"] == pytest.approx(110e-6)
    assert s["cpu_median_us"] == 2.5 and s["cpu_mean_us"] == 2.5 and s["cpu_p99_us"] == pytest.approx(4.46)
    assert s["cpu_total_s"] == pytest.approx(12.5e-6)
    empty = wl.timing_stats(np.zeros(0, np.int64), np.zeros(0, np.int64))
    assert set(empty) == set(s) and all(v is None for v in empty.values())


def test_results_carry_thread_cpu_time(tmp_path):
    assert _run(tmp_path, "--backends", "cpp", "--workloads", "mixed", "--policies", "MU", "--active", "16",
                "--steps", "20", "--warmup", "2", "--no-progress") == 0
    (r,) = _doc(tmp_path)["results"]
    assert 0 < r["cpu_median_us"] <= r["cpu_p99_us"] and r["cpu_mean_us"] > 0
    assert r["total_s"] == pytest.approx(r["mean_us"] * r["steps"] / 1e6)
    assert r["cpu_total_s"] == pytest.approx(r["cpu_mean_us"] * r["steps"] / 1e6)
    assert r["cpu_ratio_to_cpp"] == 1.0
    md = (tmp_path / "out" / "report.md").read_text()
    assert "CPU p99 µs" in md and "thread_time_ns" in md


def _out(**arrays):
    from tllm_sched.backend import SchedulerOutput

    empty = np.zeros(0, dtype=np.int32)
    return SchedulerOutput(**{k: np.asarray(arrays.get(k, empty), dtype=np.int32) for k in
                              ("fitting", "fitting_disagg_gen_init", "paused", "context", "generation")})


def test_decision_checksum_sees_every_array_and_the_chunks():
    chunks = np.array([0, 64, 128, 0], dtype=np.int32)
    base = wl.decision_checksum(_out(fitting=[1, 2, 3], context=[1], generation=[2, 3]), chunks)
    assert base == wl.decision_checksum(_out(fitting=[1, 2, 3], context=[1], generation=[2, 3]), chunks)
    others = [_out(fitting=[1, 2, 3], context=[1, 2], generation=[3]),  # a slot moved between arrays
              _out(fitting=[1, 2, 3], context=[1], generation=[3, 2]),  # order
              _out(fitting=[1, 3, 2], context=[1], generation=[2, 3]),
              _out(fitting=[1, 2, 3], context=[1], generation=[2, 3], paused=[0]),
              _out(fitting=[1, 2, 3], fitting_disagg_gen_init=[0], context=[1], generation=[2, 3])]
    assert len({base} | {wl.decision_checksum(o, chunks) for o in others}) == len(others) + 1
    chunks[1] = 32  # the same slots with another chunk size
    assert wl.decision_checksum(_out(fitting=[1, 2, 3], context=[1], generation=[2, 3]), chunks) != base


def test_decision_check_names_the_first_differing_step():
    class S:
        def __init__(self, backend, crcs):
            from array import array

            self.backend, self.crc = backend, array("q", crcs)

    ref, same, other = S("cpp", [1, 2, 3, 4]), S("python", [1, 2]), S("python-naive", [1, 2, 3, 9, 5])
    check = wl.DecisionCheck([ref, same, other], "mixed GNE N=4")
    with pytest.raises(wl.DecisionMismatch, match=r"^mixed GNE N=4: python-naive decided differently from cpp "
                                                  r"at step 4 "):
        check()
    ok = wl.DecisionCheck([ref, same], "x")
    ok()
    same.crc.extend([3, 4])
    ok()
    assert ok.checked == [0, 4] and ok.verdict is True
    same.crc.append(7)  # a step the reference has not made yet is compared later
    ok()
    assert wl.DecisionCheck([ref], "x").verdict is None


def _doctor(monkeypatch, backend, step):
    """Makes `backend` reverse its generation batch at its `step`-th scheduling pass (from 1)."""
    import dataclasses

    real = wl.SimState.schedule

    def schedule(self, count=False):
        wall, cpu, out = real(self, count)
        if self.backend == backend and len(self.crc) == step and out.generation.size > 1:
            out = dataclasses.replace(out, generation=out.generation[::-1].copy())
            self.crc[-1] = wl.decision_checksum(out, self.chunk_col)
        return wall, cpu, out

    monkeypatch.setattr(wl.SimState, "schedule", schedule)


def _python_backend():
    if "python" not in wl.probe_backends(["python"])[0]:
        pytest.skip("the python backend is unavailable")


def test_doctored_decision_ends_the_grid_with_exit_3(tmp_path, monkeypatch, capsys):
    _python_backend()
    _doctor(monkeypatch, "python", 7)
    assert _run(tmp_path, "--backends", "cpp,python", "--workloads", "decode", "--policies", "GNE", "--active", "8",
                "--steps", "10", "--warmup", "2", "--no-progress") == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "decode GNE N=8: python decided differently from cpp at step 7 " in err
    assert not (tmp_path / "out").exists()  # nothing written


def test_doctored_decision_ends_a_trace_run_with_exit_3(tmp_path, monkeypatch, capsys):
    _python_backend()
    rows = [{"timestamp": 10 * i, "input_length": 700, "output_length": 30, "hash_ids": [1, 50 + i]}
            for i in range(6)]
    f = _mooncake_file(tmp_path / "m.jsonl", rows)
    _doctor(monkeypatch, "python", 12)
    assert _run(tmp_path, "--trace", f, "--backends", "cpp,python", "--no-progress") == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "trace:mooncake GNE: python decided differently from cpp at step 12 " in err


def test_trace_rotates_backends_and_reports_cpu_time(tmp_path, monkeypatch):
    usable = wl.probe_backends(BACKENDS)[0]
    if len(usable) < 2:
        pytest.skip("needs two backends")
    order = []
    real = wl.SimState.schedule

    def schedule(self, count=False):
        order.append(self.backend)
        return real(self, count)

    monkeypatch.setattr(wl.SimState, "schedule", schedule)
    rows = [{"timestamp": 0, "input_length": 300, "output_length": 8, "hash_ids": [1]} for _ in range(3)]
    f = _mooncake_file(tmp_path / "m.jsonl", rows)
    assert _run(tmp_path, "--trace", f, "--backends", ",".join(usable), "--no-progress", plot=True) == 0
    k = len(usable)
    rounds = [order[i:i + k] for i in range(0, k * 3, k)]
    assert rounds == [usable[j:] + usable[:j] for j in range(3)]  # who goes first rotates step by step
    doc = _doc(tmp_path)
    for r in doc["results"]:
        assert r["decisions_match"] is True and 0 < r["cpu_median_us"] <= r["cpu_p99_us"]
        assert r["cpu_total_s"] > 0 and r["total_s"] > 0
    assert {"cpu_median_us", "cpu_p99_us"} <= set(doc["series"][usable[0]])
    if doc["machine"]["matplotlib"] is not None:
        assert (tmp_path / "out" / "report.png").exists()


# -------------------------------------------------------------------- prompt-length sweep


def test_sweep_state_caches_the_prefix_once():
    case = wl.SweepCase(prefix_len=96, policy="GUARANTEED_NO_EVICT", steps=2, warmup=0, seed=0, running=3, waiting=2,
                        suffix=10, output=4)
    st = wl._build_sweep(case, "cpp", wl._pool(0))
    stats = st.kv.get_kv_cache_stats()
    assert len(st.active) == 5
    assert stats["reused_blocks"] == 2 * 3  # running 2 and 3 reuse the first's 3 prefix blocks
    assert stats["missed_blocks"] == 4 + 1 + 1  # the first's 4 blocks, then each one's own block
    states = st.table.columns()["state"][np.array(st.active.slots)]
    assert (states == 10).sum() == 2  # the waiting prompts: CONTEXT_INIT


def test_sweep_tiny_on_cpp():
    cases = [wl.SweepCase(n, "GUARANTEED_NO_EVICT", steps=4, warmup=1, seed=0, running=2, waiting=3, suffix=16)
             for n in (64, 256)]
    results = [r for c in cases for r in wl.run_sweep_case(c, ["cpp"])]
    wl.add_growth(results)
    short, long = results
    assert (short["prefix_len"], long["prefix_len"]) == (64, 256) and short["steps"] == 4
    assert short["growth"] == 1.0 and long["growth"] == pytest.approx(long["cpu_median_us"] / short["cpu_median_us"])
    for r in results:
        assert r["first_us"] > 0 and 0 < r["cpu_median_us"] <= r["cpu_p99_us"] and r["waiting"] == 3
        assert r["cpu_us_per_waiting"] == pytest.approx(r["cpu_median_us"] / 3)
        assert r["key_walks_per_step"] <= 3  # at most one walk per waiting prompt and pass


def test_add_growth_hand_computed():
    rows = [dict(policy="GNE", backend=b, prefix_len=n, cpu_median_us=us) for b, n, us in
            (("cpp", 4096, 40.0), ("cpp", 1024, 10.0), ("python", 1024, 20.0), ("python", 65536, 30.0))]
    wl.add_growth(rows)
    assert [r["growth"] for r in rows] == [4.0, 1.0, 1.0, 1.5]


def test_prompt_length_sweep_cli(tmp_path, capsys):
    assert _run(tmp_path, "--prompt-length-sweep", "64,128", "--steps", "3", "--no-progress", plot=True) == 0
    doc = _doc(tmp_path)
    assert doc["kind"] == "prompt-length-sweep" and doc["config"]["prompt_lengths"] == [64, 128]
    backends = doc["config"]["backends"]
    assert [(r["prefix_len"], r["backend"]) for r in doc["results"]] == [(n, b) for n in (64, 128) for b in backends]
    assert all(r["policy"] == "GUARANTEED_NO_EVICT" and r["steps"] == 3 for r in doc["results"])
    if len(backends) > 1:
        assert all(r["decisions_match"] is True for r in doc["results"])
    out = capsys.readouterr().out
    assert "growth" in out and "cpu_med" in out
    assert "growth over the shortest" in (tmp_path / "out" / "report.md").read_text()
    args = bench._parser().parse_args(["--prompt-length-sweep"])
    assert args.prompt_length_sweep == list(wl.SWEEP_LENGTHS) == [1024, 4096, 16384, 65536]


@pytest.mark.parametrize("argv", [["--prompt-length-sweep", "0"], ["--prompt-length-sweep", "1k"],
                                  ["--prompt-length-sweep", "64", "--trace", "x.jsonl"]])
def test_prompt_length_sweep_bad_options_exit_2(tmp_path, argv, capsys):
    assert _run(tmp_path, *argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip()


def test_sweep_counts_crossings_on_one_warmup_pass():
    usable = wl.probe_backends(["cpp", "python"])[0]
    case = wl.SweepCase(64, "GUARANTEED_NO_EVICT", steps=2, warmup=1, seed=0, running=2, waiting=3, suffix=16)
    rows = {r["backend"]: r for r in wl.run_sweep_case(case, usable)}
    assert rows["cpp"]["crossings_per_step"] == 1.0
    if "python" in rows:  # a pass with waiting prompts: a few calls, whatever their number
        assert 1 <= rows["python"]["crossings_per_step"] <= 8
