"""tllm_sched/gate_measure.py: the measures of `tllm-sched gate`, per cell (workload, policy, N, backend).

Every measure schedules the same thing: the state of `bench_workloads.build_synthetic_state`
(N active requests after a few executed steps), scheduled again and again without executing,
which makes the same decisions each time (see build_synthetic_state). So every step of a cell
costs the same work, and a per-step figure is exact rather than an average over a drifting state.

  - Time (`measure_time`, in this process): the backends of one (workload, policy, N) in
    interleaved rounds, the first backend rotating, each round `round_steps` calls per backend
    timed as a block by thread CPU time and wall-clock, plus each call's wall-clock for the p99.
    The garbage collector stays on, as in a server.
  - Crossings (`measure_time` too): one step of the counting facade over the same state.
  - Instructions (`measure_instructions`, in a child interpreter): with callgrind, one child runs
    every cell: it builds the cell's state, warms it up, then schedules `a` and then `b` steps,
    calling os.getppid() (the marker) before each segment and at the end; callgrind runs with
    `--dump-before=getppid`, so each segment's count is a dump of its own, and
    (count(b) - count(a)) / (b - a) is the exact per-step count: set-up, warm-up and the marker's
    own cost cancel. The collector is off during the segments: when it runs depends on
    allocation counts, not on the step. With `perf stat` (hardware counters, instructions:u),
    which cannot cut a run into segments, each cell runs twice (a and b steps) and the counts are
    subtracted, the median of three pairs. The child runs the real interpreter binary (never a
    shell shim, which valgrind would trace instead) with PYTHONHASHSEED=0 and this process's
    sys.path, and checks that it imports the same tllm_sched.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from tllm_sched.replay import RunFailure

__all__ = ["Cell", "CellTimes", "instruction_tool", "measure_instructions", "measure_time"]

MARKER = "getppid"  # the libc function callgrind dumps before; nothing else in a step calls it
WARMUP_STEPS = 5  # executed steps when building a state (build_synthetic_state's warmup)
WARM_CALLS = 3  # schedule() calls before any measured one (caches, the adaptive interpreter)


@dataclass(frozen=True, order=True)
class Cell:
    workload: str
    policy: str
    n_active: int
    backend: str

    @property
    def group(self) -> Tuple[str, str, int]:
        return self.workload, self.policy, self.n_active

    def name(self) -> str:
        return f"{self.workload}/{self.policy}/N={self.n_active}/{self.backend}"


@dataclass
class CellTimes:
    cpu_us: List[float]  # per round: thread CPU time per step
    wall_us: List[float]  # per round: wall-clock per step
    wall_p99_us: float  # over every timed call
    round_steps: int
    crossings: Optional[int]  # Python -> C++ calls per step (None: the facade cannot count)


def _state(cell: Cell, seed: int):
    from tllm_sched.bench_workloads import build_synthetic_state

    st = build_synthetic_state(cell.workload, cell.policy, cell.n_active, cell.backend, seed=seed,
                               warmup=WARMUP_STEPS)
    for _ in range(WARM_CALLS):
        st.scheduler.schedule(st.active)
    return st


def _crossings(st) -> Optional[int]:
    if st.counter is None:
        return None
    st.counter.schedule(st.active)
    n = getattr(st.counter, "last_step_crossings", None)
    return None if n is None else int(n)


def _calibrate(st, target_ms: float) -> int:
    """Steps per round so that a round of this backend takes about target_ms."""
    k, t = 1, 0
    while t < 2e6 and k < 1 << 16:  # time at least 2 ms' worth of calls
        t0 = time.thread_time_ns()
        for _ in range(k):
            st.scheduler.schedule(st.active)
        t = time.thread_time_ns() - t0
        k *= 2
    per_step = t / (k // 2)
    return int(min(10_000, max(1, round(target_ms * 1e6 / per_step))))


def measure_time(cells: Sequence[Cell], rounds: int, seed: int, target_ms: float = 3.0,
                 round_steps: Optional[Dict[Cell, int]] = None) -> Dict[Cell, CellTimes]:
    """Time and crossings of every cell; the backends of each (workload, policy, N) interleaved.
    round_steps: steps per round per cell (a check reuses the baseline's), else calibrated."""
    groups: Dict[Tuple[str, str, int], List[Cell]] = {}
    for c in cells:
        groups.setdefault(c.group, []).append(c)
    out: Dict[Cell, CellTimes] = {}
    for group in groups.values():
        states = {c: _state(c, seed) for c in group}
        steps = {c: (round_steps or {}).get(c) or _calibrate(states[c], target_ms) for c in group}
        cpu = {c: np.zeros(rounds) for c in group}
        wall = {c: np.zeros(rounds) for c in group}
        calls = {c: np.zeros(rounds * steps[c], dtype=np.int64) for c in group}
        gc.collect()
        for r in range(rounds):
            shift = r % len(group)
            for c in group[shift:] + group[:shift]:
                sched, active, k, per_call = states[c].scheduler, states[c].active, steps[c], calls[c]
                base = r * k
                clock = time.perf_counter_ns
                c0, w0 = time.thread_time_ns(), clock()
                for i in range(k):
                    t0 = clock()
                    sched.schedule(active)
                    per_call[base + i] = clock() - t0
                w1, c1 = clock(), time.thread_time_ns()
                cpu[c][r], wall[c][r] = (c1 - c0) / k / 1e3, (w1 - w0) / k / 1e3
        for c in group:
            out[c] = CellTimes(cpu[c].tolist(), wall[c].tolist(), float(np.percentile(calls[c], 99)) / 1e3,
                               steps[c], _crossings(states[c]))
        del states
    return out


# ---------------------------------------------------------------------------- instructions


def _real_python() -> str:
    exe = sys.executable
    try:
        with open(exe, "rb") as f:
            if f.read(2) == b"#!":
                raise RunFailure(f"{exe} is a script, not the interpreter binary; run the real python")
    except OSError as e:
        raise RunFailure(f"cannot read the interpreter {exe}: {e.strerror or e}") from None
    return exe


def _perf_works() -> bool:
    if shutil.which("perf") is None:
        return False
    try:
        p = subprocess.run(["perf", "stat", "-x,", "-e", "instructions:u", "true"], capture_output=True, text=True,
                           timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return p.returncode == 0 and _perf_count(p.stderr) is not None


def instruction_tool(choice: str) -> Tuple[Optional[str], str]:
    """(tool or None, why): choice is auto, callgrind, perf or off."""
    if choice == "off":
        return None, "instructions not measured (--instructions off)"
    have_valgrind = shutil.which("valgrind") is not None
    if choice == "callgrind" or (choice == "auto" and have_valgrind):
        if not have_valgrind:
            raise RunFailure("--instructions callgrind: valgrind is not installed (apt-get install valgrind)")
        return "callgrind", "instructions counted by valgrind --tool=callgrind"
    if _perf_works():
        return "perf", "instructions:u from hardware counters (perf stat); valgrind is not installed"
    if choice == "perf":
        raise RunFailure("--instructions perf: `perf stat -e instructions:u` does not work here")
    return None, "instructions not measured: neither valgrind nor perf hardware counters are available"


def _child_env() -> dict:
    # PYTHONSAFEPATH: `-m` must not put the cwd (say, a checkout without a built extension) first.
    path = [p for p in sys.path if p]
    return dict(os.environ, PYTHONHASHSEED="0", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", PYTHONSAFEPATH="1",
                PYTHONPATH=os.pathsep.join(path))


def _plan(cells: Sequence[Cell], segments: Sequence[int], markers: bool, seed: int, imports: Sequence[str]) -> str:
    import tllm_sched

    return json.dumps(dict(cells=[[c.workload, c.policy, c.n_active, c.backend] for c in cells],
                           segments=list(segments), markers=markers, seed=seed, imports=list(imports),
                           module=tllm_sched.__file__))


def _run_child(cmd: List[str], what: str) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, env=_child_env(), capture_output=True, text=True)
    except OSError as e:
        raise RunFailure(f"{what}: cannot start {cmd[0]}: {e.strerror or e}") from None
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or "").splitlines() if ln.strip() and not ln.startswith("==")]
        raise RunFailure(f"{what} failed (exit {proc.returncode}): {lines[-1] if lines else 'no message'}")
    return proc


def _callgrind_total(path: Path) -> int:
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RunFailure(f"callgrind wrote no total in {path.name}")


def _callgrind(cells: Sequence[Cell], a: int, b: int, seed: int, imports: Sequence[str]) -> Dict[Cell, int]:
    with tempfile.TemporaryDirectory(prefix="tllm-gate-") as d:
        out = Path(d) / "cg.out"
        cmd = ["valgrind", "--tool=callgrind", f"--dump-before={MARKER}", "--dump-line=no",
               f"--callgrind-out-file={out}", _real_python(), "-m", "tllm_sched.gate_measure",
               _plan(cells, (a, b), True, seed, imports)]
        _run_child(cmd, "the callgrind run")
        parts = {}
        for f in Path(d).glob("cg.out.*"):
            suffix = f.name.rsplit(".", 1)[1]
            if suffix.isdigit():
                parts[int(suffix)] = _callgrind_total(f)
        # Three markers per cell: dump 3i+2 holds segment a of cell i, dump 3i+3 segment b.
        if sorted(parts) != list(range(1, 3 * len(cells) + 1)):
            raise RunFailure(f"callgrind wrote {len(parts)} dumps, expected {3 * len(cells)} "
                             f"(did something else call {MARKER}()?)")
        return {c: (parts[3 * i + 3] - parts[3 * i + 2]) // (b - a) for i, c in enumerate(cells)}


_PERF_LINE = re.compile(r"^(\d+),[^,]*,instructions(:u)?,", re.M)


def _perf_count(stderr: str) -> Optional[int]:
    m = _PERF_LINE.search(stderr)
    return int(m.group(1)) if m else None


def _perf(cells: Sequence[Cell], a: int, b: int, seed: int, imports: Sequence[str]) -> Dict[Cell, int]:
    out = {}
    for c in cells:
        per_step = []
        for _ in range(3):
            counts = []
            for k in (a, b):
                cmd = ["perf", "stat", "-x,", "-e", "instructions:u", _real_python(), "-m", "tllm_sched.gate_measure",
                       _plan([c], (k,), False, seed, imports)]
                n = _perf_count(_run_child(cmd, f"the perf run of {c.name()}").stderr)
                if n is None:
                    raise RunFailure("perf stat printed no instruction count")
                counts.append(n)
            per_step.append((counts[1] - counts[0]) // (b - a))
        out[c] = int(np.median(per_step))
    return out


def measure_instructions(cells: Sequence[Cell], tool: str, steps: int, seed: int,
                         imports: Sequence[str] = ()) -> Dict[Cell, int]:
    """Instructions per scheduling step of every cell, by `tool` (callgrind or perf)."""
    a, b = 1, 1 + steps
    return (_callgrind if tool == "callgrind" else _perf)(list(cells), a, b, seed, imports)


# ------------------------------------------------------------------------- the child


def _child(plan: dict) -> None:
    import tllm_sched

    if os.path.realpath(tllm_sched.__file__) != os.path.realpath(plan["module"]):
        raise SystemExit(f"the child imported {tllm_sched.__file__}, not {plan['module']}")
    for name in plan["imports"]:
        importlib.import_module(name)
    marker = os.getppid if plan["markers"] else (lambda: None)
    for w, p, n, backend in plan["cells"]:
        st = _state(Cell(w, p, n, backend), plan["seed"])
        sched, active = st.scheduler, st.active
        gc.collect()
        gc.disable()
        for k in plan["segments"]:
            marker()
            for _ in range(k):
                sched.schedule(active)
        marker()
        gc.enable()
        del st, sched, active


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
