"""tests/test_gate.py: `tllm-sched gate` (tllm_sched/gate.py, gate_measure.py, gate_stats.py) and the
`tllm_gate` pytest fixture (tllm_sched/pytest_plugin.py).

Fast: the statistics against hand-computed values, every invalid input (exit 2, one line, before
anything is measured), tiny record/check runs without instruction counts (one cell of 8 requests,
a few rounds), doctored baselines, a fake `perf`, and one small callgrind run (skipped without
valgrind or under ASan, which valgrind cannot run).
"""

import copy
import importlib.metadata
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tllm_sched import gate, gate_measure
from tllm_sched.gate_measure import Cell
from tllm_sched.gate_stats import _exact_u_counts, hodges_lehmann_ratio, judge, mann_whitney_greater
from tllm_sched.replay import RunFailure

TINY = ["--workloads", "decode", "--policies", "GNE", "--backends", "cpp,python", "--active", "8"]
LOOSE = ["--max-time-growth", "1000", "--max-ratio-growth", "1000"]  # time cannot fail: not asserted in unit tests
GNE = "GUARANTEED_NO_EVICT"


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# ------------------------------------------------------------------------------ statistics


def test_exact_u_distribution_hand_counted():
    # Orderings of {x1, x2} among {y1, y2}: U = 0 (xxyy reversed), 1, 2 (two ways), 3, 4.
    assert _exact_u_counts(2, 2).tolist() == [1, 1, 2, 1, 1]
    assert _exact_u_counts(1, 3).tolist() == [1, 1, 1, 1]
    assert _exact_u_counts(30, 30).sum() == math.comb(60, 30)


def test_mann_whitney_hand_computed():
    assert mann_whitney_greater([3, 4], [1, 2]) == pytest.approx(1 / 6)  # the one most extreme ordering of 6
    assert mann_whitney_greater([2, 4], [1, 3]) == pytest.approx(2 / 6)  # U = 3: orderings with U >= 3
    assert mann_whitney_greater([1, 2], [3, 4]) == 1.0
    # Ties: the normal approximation. x = [2, 2], y = [1, 2]: U = 2 + 2 * 0.5 = 3, mean 2, ranks 1, 3, 3, 3;
    # var = 2 * 2 / 12 * (5 - (27 - 3) / 12) = 1, z = (3 - 2 - 0.5) / 1 = 0.5.
    assert mann_whitney_greater([2, 2], [1, 2]) == pytest.approx(0.5 * math.erfc(0.5 / math.sqrt(2)))
    assert mann_whitney_greater([5, 5], [5, 5]) == 1.0


def test_mann_whitney_matches_scipy_where_available():
    stats = pytest.importorskip("scipy.stats")
    import numpy as np

    rng = np.random.default_rng(7)
    for m, n, method in ((8, 11, "exact"), (30, 30, "exact"), (40, 45, "asymptotic")):
        x, y = rng.normal(0.3, 1, m), rng.normal(0, 1, n)
        ref = stats.mannwhitneyu(x, y, alternative="greater", method=method).pvalue
        assert mann_whitney_greater(x, y) == pytest.approx(ref, rel=1e-9)


def test_hodges_lehmann_ratio():
    # log ratios of the pairs: log 2, 0, log 4, log 2 -> median log 2.
    assert hodges_lehmann_ratio([2, 4], [1, 2]) == pytest.approx(2.0)
    assert hodges_lehmann_ratio([1, 1, 1, 50], [1, 1, 1, 1]) == pytest.approx(1.0)  # one disturbed round


def test_judge_needs_both_significance_and_effect():
    base = [10 + 0.1 * i for i in range(10)]
    slower = [1.5 * v for v in base]
    assert judge(slower, base, 0.25, 0.01).regression
    assert not judge(slower, base, 0.6, 0.01).regression  # significant, but below the effect threshold
    assert not judge(slower[:2], base[:2], 0.25, 0.01).regression  # p = 1/6: not significant
    assert not judge(base, slower, 0.25, 0.01).regression  # faster


# ------------------------------------------------------------------------ crafted baselines


def _cell_doc(backend, cpu, crossings=1, instructions=None, rounds=3, **over):
    c = dict(workload="decode", policy=GNE, n_active=8, backend=backend, instructions_per_step=instructions,
             crossings_per_step=crossings, round_steps=10, cpu_us=[cpu] * rounds, wall_us=[cpu] * rounds,
             wall_p99_us=cpu)
    c.update(over)
    return c


def _baseline_doc(rounds=3, instructions=None):
    from tllm_sched.bench_report import machine_info

    return dict(format=gate.FORMAT, created="2025-12-01T00:00:00+00:00", machine=machine_info(),
                config=dict(rounds=rounds, steps=4, seed=0, instructions=instructions),
                cells=[_cell_doc("cpp", 3.0, rounds=rounds), _cell_doc("python", 5.0, rounds=rounds)])


def _write(path: Path, doc) -> str:
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return str(path)


def _mutated(fn):
    doc = _baseline_doc()
    fn(doc)
    return doc


BAD_BASELINES = {
    "not-json": "{nope",
    "other-format": json.dumps({"format": "tllm_sched.bench/1", "results": []}),
    "no-config": json.dumps({"format": gate.FORMAT, "cells": []}),
    "no-cells": _mutated(lambda d: d.update(cells=[])),
    "zero-rounds": _mutated(lambda d: d["config"].update(rounds=0)),
    "bad-tool": _mutated(lambda d: d["config"].update(instructions="rdtsc")),
    "unknown-workload": _mutated(lambda d: d["cells"][0].update(workload="nope")),
    "zero-active": _mutated(lambda d: d["cells"][0].update(n_active=0)),
    "nan-time": _mutated(lambda d: d["cells"][0]["cpu_us"].__setitem__(1, float("nan"))),
    "negative-time": _mutated(lambda d: d["cells"][1]["wall_us"].__setitem__(0, -1.0)),
    "short-rounds": _mutated(lambda d: d["cells"][0].update(cpu_us=[3.0])),
    "infinite-p99": _mutated(lambda d: d["cells"][0].update(wall_p99_us=float("inf"))),
    "negative-count": _mutated(lambda d: d["cells"][0].update(instructions_per_step=-5)),
    "float-crossings": _mutated(lambda d: d["cells"][0].update(crossings_per_step=1.5)),
    "duplicate-cell": _mutated(lambda d: d["cells"].append(copy.deepcopy(d["cells"][0]))),
}


@pytest.mark.parametrize("name", sorted(BAD_BASELINES))
def test_malformed_baseline_exit_2_one_line(tmp_path, name, capsys, monkeypatch):
    monkeypatch.setattr(gate, "measure_time", _never)
    doc = BAD_BASELINES[name]
    path = _write(tmp_path / f"{name}.json", doc if isinstance(doc, str) else json.dumps(doc))
    assert gate.main(["check", path]) == 2
    assert f"{name}.json" in _one_line(capsys)


def _never(*a, **k):
    raise AssertionError("measured after an invalid input")


BAD_ARGS = {
    "missing-file": ["check", "{tmp}/missing.json"],
    "folder-baseline": ["check", "{tmp}"],
    "nan-time": ["check", "{base}", "--max-time-growth", "nan"],
    "inf-ratio": ["check", "{base}", "--max-ratio-growth", "inf"],
    "negative-instructions": ["check", "{base}", "--max-instructions-growth", "-0.01"],
    "text-threshold": ["check", "{base}", "--max-time-growth", "lots"],
    "alpha-zero": ["check", "{base}", "--alpha", "0"],
    "alpha-above-one": ["check", "{base}", "--alpha", "1.5"],
    "alpha-nan": ["check", "{base}", "--alpha", "nan"],
    "unknown-policy": ["check", "{base}", "--policies", "FIFO"],
    "zero-active": ["record", "{tmp}/b.json", "--active", "0"],
    "zero-rounds": ["record", "{tmp}/b.json", "--rounds", "0"],
    "unknown-option": ["check", "{base}", "--bogus"],
    "no-action": [],
    "unknown-action": ["compare", "{base}"],
    "cell-not-in-baseline": ["check", "{base}", "--active", "9999"],
    "backend-not-in-baseline": ["check", "{base}", "--backends", "python-naive"],
    "tool-not-in-baseline": ["check", "{base}", "--instructions", "callgrind"],
    "out-in-missing-folder": ["check", "{base}", "--out", "{tmp}/no/such/dir/r.json"],
    "out-is-a-folder": ["check", "{base}", "--out", "{tmp}"],
    "record-into-missing-folder": ["record", "{tmp}/no/such/dir/b.json"],
    "bad-import": ["check", "{base}", "--import", "no_such_module_for_the_gate"],
}


@pytest.mark.parametrize("name", sorted(BAD_ARGS))
def test_bad_input_exit_2_one_line_before_measuring(tmp_path, name, capsys, monkeypatch):
    monkeypatch.setattr(gate, "measure_time", _never)
    base = _write(tmp_path / "base.json", _baseline_doc())
    argv = [a.format(tmp=tmp_path, base=base) for a in BAD_ARGS[name]]
    assert gate.main(argv) == 2
    _one_line(capsys)


def test_cli_bad_input_has_no_traceback(tmp_path):
    """The real command line: exit 2 and exactly one line on stderr."""
    for argv in (["check", str(tmp_path / "missing.json")], ["check", "x.json", "--max-time-growth", "nan"]):
        p = subprocess.run([sys.executable, "-m", "tllm_sched", "gate", *argv], cwd=tmp_path, capture_output=True,
                           text=True, timeout=60)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert p.stderr.startswith("tllm-sched gate: ")


@pytest.mark.parametrize("error, code", [(ZeroDivisionError("boom"), 3), (RunFailure("valgrind died"), 3)])
def test_a_crash_is_exit_3_never_1(tmp_path, capsys, monkeypatch, error, code):
    def crash(*a, **k):
        raise error

    monkeypatch.setattr(gate, "measure_time", crash)
    base = _write(tmp_path / "base.json", _baseline_doc())
    assert gate.main(["check", base, "--instructions", "off"]) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(error) in err.strip().splitlines()[-1]


def test_write_atomic_replaces_and_leaves_no_scratch(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    gate.write_atomic(str(target), {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


# --------------------------------------------------------------------- record and check, tiny


@pytest.fixture(scope="module")
def tiny_baseline(tmp_path_factory):
    path = tmp_path_factory.mktemp("gate") / "base.json"
    assert gate.main(["record", str(path), *TINY, "--rounds", "5", "--instructions", "off"]) == 0
    return path


def test_record_writes_the_cells(tiny_baseline):
    doc = json.loads(tiny_baseline.read_text())
    assert doc["format"] == gate.FORMAT and doc["config"]["rounds"] == 5 and doc["config"]["instructions"] is None
    assert [(c["workload"], c["policy"], c["n_active"], c["backend"]) for c in doc["cells"]] == [
        ("decode", GNE, 8, "cpp"), ("decode", GNE, 8, "python")]
    for c in doc["cells"]:
        # Steady decode: cpp is one StepScheduler call, python one slots read (tests/test_crossings.py).
        assert c["crossings_per_step"] == 1
        assert len(c["cpu_us"]) == len(c["wall_us"]) == 5 and min(c["cpu_us"]) > 0 and c["round_steps"] >= 1
        assert c["instructions_per_step"] is None
    assert gate.load_baseline(str(tiny_baseline)) == doc


def _doctor(src: Path, dst: Path, fn) -> str:
    doc = json.loads(src.read_text())
    for c in doc["cells"]:
        fn(c)
    return _write(dst, doc)


def test_unchanged_check_passes_and_writes_out(tiny_baseline, tmp_path, capsys):
    out = tmp_path / "result.json"
    assert gate.main(["check", str(tiny_baseline), *LOOSE, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "passed (2 cells)" in text and "instructions not compared: the baseline has no counts" in text
    doc = json.loads(out.read_text())
    assert [v["regressions"] for v in doc["verdicts"]] == [[], []]
    assert gate.load_baseline(str(out))["cells"][1]["crossings_per_step"] == 1  # a result is a baseline too


def test_crossings_compared_exactly(tiny_baseline, tmp_path, capsys):
    path = _doctor(tiny_baseline, tmp_path / "b.json", lambda c: c.update(crossings_per_step=2))
    assert gate.main(["check", path, *LOOSE]) == 1
    out = capsys.readouterr().out
    assert f"REGRESSION decode/{GNE}/N=8/python: crossings per step 2 -> 1 (compared exactly)" in out


def test_time_a_hundred_times_faster_baseline_fails_on_cpu_time(tiny_baseline, tmp_path, capsys):
    def faster(c):
        c["cpu_us"] = [v / 100 for v in c["cpu_us"]]
        c["wall_us"] = [v / 100 for v in c["wall_us"]]

    path = _doctor(tiny_baseline, tmp_path / "b.json", faster)
    assert gate.main(["check", path]) == 1
    out = capsys.readouterr().out
    for backend in ("cpp", "python"):
        assert f"REGRESSION decode/{GNE}/N=8/{backend}: thread CPU time per step" in out
    assert "ratio to cpp" not in out.split("note:")[0].split("REGRESSION decode")[-1]  # ratios unchanged
    # On another machine class absolute times are not judged, and the ratios did not change.
    assert gate.main(["check", path, "--absolute-time", "off"]) == 0


def test_ratio_to_cpp_fails_when_python_alone_slows(tiny_baseline, tmp_path, capsys):
    def python_faster(c):
        if c["backend"] == "python":
            c["cpu_us"] = [v / 100 for v in c["cpu_us"]]

    path = _doctor(tiny_baseline, tmp_path / "b.json", python_faster)
    assert gate.main(["check", path, "--absolute-time", "off"]) == 1
    out = capsys.readouterr().out
    assert f"REGRESSION decode/{GNE}/N=8/python: CPU time ratio to cpp" in out
    assert f"REGRESSION decode/{GNE}/N=8/cpp" not in out


def test_check_a_subset_of_cells(tiny_baseline, capsys):
    assert gate.main(["check", str(tiny_baseline), "--backends", "python", *LOOSE]) == 0
    out = capsys.readouterr().out
    assert "passed (1 cells)" in out and "1 baseline cells not selected" in out


# ------------------------------------------------------------------------ instruction tools


def _fake_perf(folder: Path, supported: bool = True) -> None:
    """A `perf` that answers `stat -x, -e instructions:u CMD`: 5000 + 700 per scheduled step of the plan."""
    folder.mkdir(exist_ok=True)
    script = folder / "perf"
    body = ("import json, sys\n"
            "plan = sys.argv[-1]\n"
            "steps = sum(json.loads(plan)['segments']) if plan.startswith('{') else 0\n"
            f"count = str(5000 + 700 * steps) if {supported} else '<not supported>'\n"
            "sys.stderr.write(count + ',,instructions:u,1000,100.00,,\\n')\n")
    script.write_text(f"#!{sys.executable}\n{body}")
    script.chmod(0o755)


def test_perf_fallback_subtracts_two_runs(tmp_path, monkeypatch):
    _fake_perf(tmp_path / "bin")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no valgrind on this PATH
    assert gate_measure.instruction_tool("auto")[0] == "perf"
    cells = [Cell("decode", GNE, 8, "cpp"), Cell("decode", GNE, 8, "python")]
    assert gate_measure.measure_instructions(cells, "perf", steps=8, seed=0) == {c: 700 for c in cells}


def test_no_counter_at_all(tmp_path, monkeypatch):
    _fake_perf(tmp_path / "bin", supported=False)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    tool, why = gate_measure.instruction_tool("auto")
    assert tool is None and "neither valgrind nor perf" in why
    for choice in ("perf", "callgrind"):
        with pytest.raises(RunFailure):
            gate_measure.instruction_tool(choice)


def test_five_percent_more_instructions_in_one_cell_fails(tmp_path, monkeypatch, capsys):
    """Counts from the fake perf (700 per step in every cell); the baseline's cpp count 5% lower."""
    _fake_perf(tmp_path / "bin")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    base = tmp_path / "base.json"
    assert gate.main(["record", str(base), *TINY, "--rounds", "3", "--steps", "4", "--instructions", "perf"]) == 0
    assert [c["instructions_per_step"] for c in json.loads(base.read_text())["cells"]] == [700, 700]

    def cpp_lower(c):
        if c["backend"] == "cpp":
            c["instructions_per_step"] = 665

    path = _doctor(base, tmp_path / "doctored.json", cpp_lower)
    capsys.readouterr()
    assert gate.main(["check", path, *LOOSE]) == 1
    regressions = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("REGRESSION")]
    assert regressions == [f"REGRESSION decode/{GNE}/N=8/cpp: instructions per step 665 -> 700 (+5.3%, limit +2.0%)"]
    assert gate.main(["check", path, *LOOSE, "--max-instructions-growth", "0.06"]) == 0


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
@pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""), reason="valgrind cannot run under ASan")
def test_callgrind_counts_each_cell_in_one_child():
    cells = [Cell("decode", GNE, 8, "cpp"), Cell("decode", GNE, 8, "python")]
    counts = gate_measure.measure_instructions(cells, "callgrind", steps=2, seed=0)
    # A step of either backend at N=8 is tens of thousands of instructions (about 25,000 for cpp),
    # nowhere near the millions of the interpreter's start-up that the segment dumps leave out.
    assert set(counts) == set(cells) and all(10_000 < n < 1_000_000 for n in counts.values())


# ------------------------------------------------------------------------------ pytest plugin


def _pytest(tmp_path: Path, *args, folder: bool = True) -> subprocess.CompletedProcess:
    loaded = any(ep.name == "tllm_sched" for ep in importlib.metadata.entry_points(group="pytest11"))
    plugin = [] if loaded else ["-p", "tllm_sched.pytest_plugin"]
    where = ["--tllm-gate-dir", str(tmp_path / "gates")] if folder else []
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugin, *where, *args,
                           "test_mine.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)


MY_TEST = ("from tllm_sched.gate import Thresholds\n"
           "def test_cost(tllm_gate):\n"
           "    tllm_gate('mine', workloads=['decode'], policies=['GNE'], backends=['cpp', 'python'], active=[8],\n"
           "              rounds=3, instructions='off', thresholds=Thresholds(time=1000, ratio=1000))\n")


def test_pytest_fixture_records_then_catches_a_regression(tmp_path):
    (tmp_path / "test_mine.py").write_text(MY_TEST)
    p = _pytest(tmp_path, "-rs")
    assert p.returncode == 0 and "1 skipped" in p.stdout and "--tllm-gate=record" in p.stdout
    p = _pytest(tmp_path, "--tllm-gate=record")
    assert p.returncode == 0, p.stdout + p.stderr
    baseline = tmp_path / "gates" / "mine.json"
    assert json.loads(baseline.read_text())["format"] == gate.FORMAT
    p = _pytest(tmp_path)
    assert p.returncode == 0 and "1 passed" in p.stdout, p.stdout
    _doctor(baseline, baseline, lambda c: c.update(crossings_per_step=5))
    p = _pytest(tmp_path)
    assert p.returncode == 1 and f"decode/{GNE}/N=8/python: crossings per step 5 -> 1" in p.stdout, p.stdout


def test_pytest_fixture_keeps_baselines_in_pytest_benchmark_storage(tmp_path):
    pytest.importorskip("pytest_benchmark")
    (tmp_path / "test_mine.py").write_text(MY_TEST)
    p = _pytest(tmp_path, "--tllm-gate=record", "--benchmark-storage", str(tmp_path / "store"), folder=False)
    assert p.returncode == 0, p.stdout + p.stderr
    # pytest-benchmark keeps its runs per machine: store/<machine id>/; the gate's go beside them.
    assert [q.relative_to(tmp_path / "store").parts[1:] for q in (tmp_path / "store").rglob("*.json")] == [
        ("tllm_gate", "mine.json")]
