"""tllm_sched/gate.py: `tllm-sched gate`: a CI performance gate that does not flake.

    tllm-sched gate record BASELINE.json [--workloads W] [--policies P] [--backends B] [--active N,...]
                                         [--rounds R] [--steps K] [--instructions auto|callgrind|perf|off]
    tllm-sched gate check BASELINE.json [same cell options: a subset of the baseline's cells]
                                        [--max-instructions-growth 0.02] [--max-time-growth 0.30]
                                        [--max-ratio-growth 0.25] [--alpha 0.01] [--absolute-time auto|on|off]
                                        [--out RESULT.json]

A cell is (workload, policy, N active, backend); the workloads are the bench's
(`bench_workloads.WORKLOADS`), so a new one joins the default set by itself. Each cell gets,
side by side (how: gate_measure.py):

  1. instructions per scheduling step, from callgrind (or perf hardware counters where valgrind is
     missing; the report says which). Nearly deterministic (PYTHONHASHSEED=0, collector off in
     the counted steps): over 20 checks against one baseline on the shared 2-core machine, no
     cell moved more than 0.84%; what moves is the process's memory layout (environment, paths),
     which shifts a few hundred instructions in the small cells. A cell fails above +2%
     (`--max-instructions-growth`): over twice the worst drift, and a 5% increase (+5.3% over a
     baseline 5% lower) clears it by 3 points.
  2. time per step: thread CPU time and wall-clock per round of interleaved rounds, both
     reported; the CPU time judged by the one-sided Mann-Whitney U test and the Hodges-Lehmann
     ratio (gate_stats.py): a cell fails when its new rounds are significantly slower
     (p < `--alpha` 0.01) AND slower by more than `--max-time-growth` (30%). Thread CPU time
     because a neighbour that takes the core stretches the wall-clock, not the CPU time: on the
     shared 2-core machine a baseline recorded at load average 6 had wall-clock medians 2.3x its
     CPU times, and a check minutes later 1.0x. CPU time still drifts with what the neighbours
     do to the shared caches: over 26 checks of unchanged code at load averages 5 to 14, the
     CPU-time ratio new / baseline of a cell ranged from 0.90 to 1.18 (the largest in the cell
     with the biggest working set, mixed/N=1024/python; every such drift is "significant" with
     30 rounds: the effect size is what guards). 30% sits between that drift and what must fail:
     a baseline 30% faster than today is a ratio of 1/0.7 = 1.43 (1.28 in a cell that drifted to
     0.90, while the other cells still fail). Absolute times mean something only on the machine
     class that recorded them: with `--absolute-time auto` they are judged when the CPU model
     and count match the baseline's.
  3. ratio to the reference backend (cpp): per round, the cell's CPU time over cpp's in the same
     round, judged the same way with `--max-ratio-growth` (25%; the 26 checks' largest was 1.13).
     Machine speed cancels within a round, so this holds on any machine; it does not see cpp
     itself slowing down (1. and 2. do).
  4. Python -> C++ crossings per step, compared exactly.

A check fails a cell only on these; each failure names the cell, the measure, the baseline and
the new figure. Exit status: 0 pass, 1 regression, 2 invalid input (bad option, unreadable or
malformed baseline, a threshold that is NaN, infinite or negative; one line), 3 a run that could
not go on (never 1 for a crash). Outputs are checked writable before any run and written
atomically. When a change is meant to cost more, record a new baseline and commit it with the
reason.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from tllm_sched.gate_measure import Cell, CellTimes, instruction_tool, measure_instructions, measure_time
from tllm_sched.gate_stats import judge
from tllm_sched.replay import RunFailure

__all__ = ["FORMAT", "GateError", "Thresholds", "CheckResult", "check", "check_writable", "import_modules",
           "load_baseline", "main", "record", "select_cells", "write_atomic"]

PROG = "tllm-sched gate"
FORMAT = "tllm_sched.gate/1"
REFERENCE = "cpp"
DEFAULT_ACTIVE = (64, 1024)
DEFAULT_ROUNDS = 30
DEFAULT_STEPS = 8  # instruction-counted steps per cell (plus one; see gate_measure)
DEFAULT_SEED = 0


class GateError(ValueError):
    """Invalid input (exit status 2)."""


@dataclass(frozen=True)
class Thresholds:
    instructions: float = 0.02  # growth of instructions per step
    time: float = 0.30  # growth of the thread CPU time per step
    ratio: float = 0.25  # growth of the CPU time ratio to the reference backend
    alpha: float = 0.01  # significance level of the time tests

    def __post_init__(self):
        for name in ("instructions", "time", "ratio"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise GateError(f"threshold {name} must be a finite number >= 0, got {v!r}")
        if not (isinstance(self.alpha, (int, float)) and 0 < self.alpha < 1):
            raise GateError(f"alpha must be between 0 and 1, got {self.alpha!r}")


# ---------------------------------------------------------------------- cells and baselines


def select_cells(workloads=None, policies=None, backends=None, active=None) -> List[Cell]:
    """The record cell set: every workload x policy x N x usable backend (defaults: all, N 64 and 1024).
    Policies may be given by their short names (GNE, MU); GateError for anything unknown."""
    from tllm_sched import bench_workloads as wl
    from tllm_sched.bench_args import ALIASES
    from tllm_sched.scheduler import BACKENDS

    policies = [ALIASES.get(str(p).upper(), p) for p in policies] if policies else wl.POLICIES
    for kind, given, known in (("workload", workloads, wl.WORKLOADS), ("policy", policies, wl.POLICIES),
                               ("backend", backends, BACKENDS)):
        bad = [x for x in given or () if x not in known]
        if bad:
            raise GateError(f"unknown {kind} {bad[0]!r} (choose from {', '.join(known)})")
    if active is not None and not all(isinstance(n, int) and n > 0 for n in active):
        raise GateError(f"active counts must be positive integers, got {list(active)}")
    usable, notices = wl.probe_backends(backends or BACKENDS)
    for n in notices:
        print(f"{PROG}: {n}", file=sys.stderr)
    if not usable:
        raise RunFailure("no usable backend")
    return [Cell(w, p, n, b) for w, p, n, b in itertools.product(workloads or wl.WORKLOADS, policies,
                                                                 active or DEFAULT_ACTIVE, usable)]


def _bad(path: str, what: str):
    return GateError(f"{path}: malformed baseline: {what}")


def _positive_numbers(v, n: int) -> bool:
    return (isinstance(v, list) and len(v) == n and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                         and math.isfinite(x) and x > 0 for x in v))


def _count_or_none(v) -> bool:
    return v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0)


def load_baseline(path: str) -> dict:
    """A gate baseline, checked field by field; GateError (one line) otherwise."""
    from tllm_sched import bench_workloads as wl
    from tllm_sched.scheduler import BACKENDS

    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as e:
        raise GateError(f"{path}: cannot read: {e.strerror or e}") from None
    except ValueError as e:
        raise GateError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise GateError(f"{path}: not a {FORMAT} baseline")
    cfg = doc.get("config")
    if not isinstance(cfg, dict):
        raise _bad(path, "no config")
    for key in ("rounds", "steps"):
        if not (isinstance(cfg.get(key), int) and cfg[key] > 0):
            raise _bad(path, f"config.{key} must be a positive integer")
    if not isinstance(cfg.get("seed"), int) or cfg.get("instructions") not in (None, "callgrind", "perf"):
        raise _bad(path, "config.seed must be an integer and config.instructions callgrind, perf or null")
    cells, seen = doc.get("cells"), set()
    if not isinstance(cells, list) or not cells:
        raise _bad(path, "'cells' must be a non-empty list")
    for i, c in enumerate(cells):
        where = f"cells[{i}]"
        if not isinstance(c, dict):
            raise _bad(path, f"{where} is not an object")
        if (c.get("workload") not in wl.WORKLOADS or c.get("policy") not in wl.POLICIES
                or c.get("backend") not in BACKENDS):
            raise _bad(path, f"{where}: unknown workload, policy or backend")
        if not (isinstance(c.get("n_active"), int) and c["n_active"] > 0):
            raise _bad(path, f"{where}: n_active must be a positive integer")
        if not (isinstance(c.get("round_steps"), int) and c["round_steps"] > 0):
            raise _bad(path, f"{where}: round_steps must be a positive integer")
        for key in ("cpu_us", "wall_us"):
            if not _positive_numbers(c.get(key), cfg["rounds"]):
                raise _bad(path, f"{where}: {key} must be {cfg['rounds']} finite positive numbers")
        if not _positive_numbers([c.get("wall_p99_us")], 1):
            raise _bad(path, f"{where}: wall_p99_us must be a finite positive number")
        for key in ("instructions_per_step", "crossings_per_step"):
            if not _count_or_none(c.get(key)):
                raise _bad(path, f"{where}: {key} must be a count >= 0 or null")
        cell = _cell(c)
        if cell in seen:
            raise _bad(path, f"{where}: {cell.name()} appears twice")
        seen.add(cell)
    return doc


def _cell(c: dict) -> Cell:
    return Cell(c["workload"], c["policy"], c["n_active"], c["backend"])


def check_writable(path: str) -> None:
    """Raises GateError unless `path` can be written (tried with a scratch file beside it)."""
    if os.path.isdir(path):
        raise GateError(f"{path}: is a folder")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, scratch = tempfile.mkstemp(dir=folder, prefix=".gate-", suffix=".tmp")
        os.close(fd)
        os.remove(scratch)
    except OSError as e:
        raise GateError(f"{path}: cannot write: {e.strerror or e}") from None


def write_atomic(path: str, doc: dict) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".gate-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        os.remove(tmp)
        raise


# ----------------------------------------------------------------------------- measuring


def _measure(cells: Sequence[Cell], tool: Optional[str], rounds: int, steps: int, seed: int,
             imports: Sequence[str], round_steps: Optional[Dict[Cell, int]] = None) -> List[dict]:
    print(f"{PROG}: timing {len(cells)} cells, {rounds} interleaved rounds", file=sys.stderr)
    times: Dict[Cell, CellTimes] = measure_time(cells, rounds, seed, round_steps=round_steps)
    counts: Dict[Cell, int] = {}
    if tool is not None:
        print(f"{PROG}: counting instructions with {tool} ({steps} steps per cell)", file=sys.stderr)
        counts = measure_instructions(cells, tool, steps, seed, imports)
    return [dict(workload=c.workload, policy=c.policy, n_active=c.n_active, backend=c.backend,
                 instructions_per_step=counts.get(c), crossings_per_step=times[c].crossings,
                 round_steps=times[c].round_steps, cpu_us=_rounded(times[c].cpu_us),
                 wall_us=_rounded(times[c].wall_us), wall_p99_us=round(times[c].wall_p99_us, 3)) for c in cells]


def _rounded(values: Sequence[float]) -> List[float]:
    return [round(v, 4) for v in values]


def _doc(cells: List[dict], tool: Optional[str], why: str, rounds: int, steps: int, seed: int) -> dict:
    from tllm_sched.bench_report import machine_info, now_iso

    return dict(format=FORMAT, created=now_iso(), machine=machine_info(),
                config=dict(rounds=rounds, steps=steps, seed=seed, instructions=tool, instructions_note=why,
                            reference=REFERENCE, state="bench_workloads.build_synthetic_state, scheduled again "
                            "without executing"), cells=cells)


def record(cells: Sequence[Cell], *, rounds: int = DEFAULT_ROUNDS, steps: int = DEFAULT_STEPS,
           seed: int = DEFAULT_SEED, instructions: str = "auto", imports: Sequence[str] = ()) -> dict:
    """Measures `cells` and returns the baseline document (write it with json)."""
    tool, why = instruction_tool(instructions)
    return _doc(_measure(cells, tool, rounds, steps, seed, imports), tool, why, rounds, steps, seed)


@dataclass
class CheckResult:
    doc: dict  # this run, in the baseline format, with "verdicts"
    lines: List[str]  # the report, one line per cell
    regressions: List[str]  # one line per failed (cell, measure)
    notes: List[str]


def _median(v: Sequence[float]) -> float:
    return float(np.median(v))


def _same_machine(a: dict, b: dict) -> bool:
    return all(a.get(k) == b.get(k) for k in ("cpu", "cpu_count", "machine"))


def _check_tool(choice: str, recorded: Optional[str]):
    """(tool, note) for a check: the baseline's tool, when it can run here. GateError for a tool the
    baseline did not use; RunFailure when a tool named on the command line cannot run."""
    if choice == "off":
        return None, "instructions not measured (--instructions off)"
    if choice != "auto" and choice != recorded:
        raise GateError(f"--instructions {choice}: the baseline's counts are from {recorded or 'nothing'}")
    if recorded is None:
        return None, "instructions not compared: the baseline has no counts"
    try:
        return instruction_tool(recorded)
    except RunFailure as e:
        if choice != "auto":
            raise
        return None, f"instructions not compared: {e}"


def check(baseline: dict, cells: Optional[Sequence[Cell]] = None, *, thresholds: Thresholds = Thresholds(),
          instructions: str = "auto", absolute_time: str = "auto", imports: Sequence[str] = ()) -> CheckResult:
    """Re-measures the baseline's cells (or the given subset) and judges them against it."""
    from tllm_sched.bench_report import machine_info

    cfg = baseline["config"]
    base = {_cell(c): c for c in baseline["cells"]}
    cells = list(base) if cells is None else list(cells)
    missing = [c.name() for c in cells if c not in base]
    if missing:
        raise GateError(f"not in the baseline: {', '.join(missing)}")
    tool, why = _check_tool(instructions, cfg["instructions"])
    notes = [why]
    machine = machine_info()
    judge_abs = absolute_time == "on" or (absolute_time == "auto" and _same_machine(machine, baseline["machine"]))
    if not judge_abs:
        notes.append("absolute times not judged (" + ("--absolute-time off" if absolute_time == "off" else
                     "another machine than the baseline's: record a baseline on this one") + "); ratios are")
    rows = _measure(cells, tool, cfg["rounds"], cfg["steps"], cfg["seed"], imports,
                    round_steps={c: base[c]["round_steps"] for c in cells})
    new = {_cell(r): r for r in rows}
    lines, bad, verdicts = [], [], []
    for c in cells:
        line, failed = _judge_cell(c, base, new, thresholds, judge_abs, tool is not None)
        lines.append(line)
        bad += failed
        verdicts.append(dict(cell=c.name(), regressions=failed))
    if len(cells) < len(base):
        notes.append(f"{len(base) - len(cells)} baseline cells not selected")
    doc = _doc(rows, tool, why, cfg["rounds"], cfg["steps"], cfg["seed"])
    doc["verdicts"] = verdicts
    return CheckResult(doc, lines, bad, notes)


def _judge_cell(c: Cell, base: Dict[Cell, dict], new: Dict[Cell, dict], th: Thresholds, judge_abs: bool,
                instructions: bool):
    """(report line, regression lines) of one cell."""
    b, n, name, failed = base[c], new[c], c.name(), []
    parts = []
    bi, ni = b["instructions_per_step"], n["instructions_per_step"]
    if instructions and bi and ni is not None:  # bi: a count of 0 cannot grow by a fraction
        growth = ni / bi - 1
        parts.append(f"instr {bi:,} -> {ni:,} ({growth:+.1%})")
        if growth > th.instructions:
            failed.append(f"{name}: instructions per step {bi:,} -> {ni:,} ({growth:+.1%}, limit "
                          f"+{th.instructions:.1%})")
    cpu = judge(n["cpu_us"], b["cpu_us"], th.time, th.alpha)
    bc, bw, nc, nw = _median(b["cpu_us"]), _median(b["wall_us"]), _median(n["cpu_us"]), _median(n["wall_us"])
    parts.append(f"cpu {bc:.2f} -> {nc:.2f} us (x{cpu.factor:.2f})  wall {bw:.2f} -> {nw:.2f} us  "
                 f"p99 {b['wall_p99_us']:.1f} -> {n['wall_p99_us']:.1f} us")
    if judge_abs and cpu.regression:
        failed.append(f"{name}: thread CPU time per step {bc:.2f} -> {nc:.2f} us (x{cpu.factor:.2f}, "
                      f"p={cpu.p_value:.1g}; limit x{1 + th.time:.2f}; wall-clock {bw:.2f} -> {nw:.2f} us)")
    ref = Cell(c.workload, c.policy, c.n_active, REFERENCE)
    if c.backend != REFERENCE and ref in base and ref in new:
        rb = np.divide(b["cpu_us"], base[ref]["cpu_us"])
        rn = np.divide(n["cpu_us"], new[ref]["cpu_us"])
        r = judge(rn, rb, th.ratio, th.alpha)
        parts.append(f"x{REFERENCE} {_median(rb):.2f} -> {_median(rn):.2f}")
        if r.regression:
            failed.append(f"{name}: CPU time ratio to {REFERENCE} {_median(rb):.2f} -> {_median(rn):.2f} "
                          f"(x{r.factor:.2f}, p={r.p_value:.1g}); limit x{1 + th.ratio:.2f}")
    bx, nx = b["crossings_per_step"], n["crossings_per_step"]
    if bx is not None and nx is not None:
        parts.append(f"crossings {bx} -> {nx}")
        if bx != nx:
            failed.append(f"{name}: crossings per step {bx} -> {nx} (compared exactly)")
    return f"{'FAIL' if failed else 'ok':4s} {name:46s} " + "  ".join(parts), failed


# --------------------------------------------------------------------------- command line


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (exit status 2), no usage block."""

    def error(self, message):
        raise GateError(message)


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    from tllm_sched import bench_workloads as wl
    from tllm_sched.bench_args import _list, _positive
    from tllm_sched.scheduler import BACKENDS

    p = _Parser(prog=PROG, description="Record or check a performance baseline: instructions, time and crossings "
                "per scheduling step, per cell (workload x policy x N x backend).")
    sub = p.add_subparsers(dest="action", required=True, parser_class=_Parser)
    for action in ("record", "check"):
        a = sub.add_parser(action, help=f"{action} a baseline")
        a.add_argument("baseline", metavar="BASELINE.json")
        g = a.add_argument_group("cells (check: a subset of the baseline's)")
        g.add_argument("--workloads", type=_list("workload", wl.WORKLOADS), help=f"default: {','.join(wl.WORKLOADS)}")
        g.add_argument("--policies", type=_list("policy", wl.POLICIES), help="GNE, MU (default: both)")
        g.add_argument("--backends", type=_list("backend", BACKENDS), help=f"default: {','.join(BACKENDS)}")
        g.add_argument("--active", type=_list("active count", convert=int),
                       help=f"N active requests (default {','.join(map(str, DEFAULT_ACTIVE))})")
        a.add_argument("--instructions", choices=("auto", "callgrind", "perf", "off"), default="auto",
                       help="how to count instructions (auto: callgrind, else perf, else none; check: the "
                       "baseline's tool; naming one makes it required)")
        a.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                       help="import MODULE first, here and in the instruction-counting child (e.g. a module that "
                       "changes or registers a policy)")
        if action == "record":
            a.add_argument("--rounds", type=_positive, default=DEFAULT_ROUNDS,
                           help=f"time rounds (default {DEFAULT_ROUNDS})")
            a.add_argument("--steps", type=_positive, default=DEFAULT_STEPS,
                           help=f"instruction-counted steps per cell (default {DEFAULT_STEPS})")
            a.add_argument("--seed", type=int, default=DEFAULT_SEED, help="workload seed (default 0)")
        else:
            d = Thresholds()
            a.add_argument("--max-instructions-growth", type=_number, default=d.instructions,
                           help=f"fail above this growth of instructions per step (default {d.instructions})")
            a.add_argument("--max-time-growth", type=_number, default=d.time,
                           help=f"fail above this significant growth of thread CPU time per step (default {d.time})")
            a.add_argument("--max-ratio-growth", type=_number, default=d.ratio,
                           help=f"fail above this significant growth of the CPU time ratio to cpp (default {d.ratio})")
            a.add_argument("--alpha", type=_number, default=d.alpha, help=f"significance level (default {d.alpha})")
            a.add_argument("--absolute-time", choices=("auto", "on", "off"), default="auto",
                           help="judge absolute times (auto: when the machine matches the baseline's)")
            a.add_argument("--out", metavar="RESULT.json", help="also write this run (baseline format, with verdicts)")
    return p


def import_modules(modules: Sequence[str]) -> None:
    for m in modules:
        try:
            importlib.import_module(m)
        except Exception as e:  # noqa: BLE001  the user's module: any failure is bad input
            raise GateError(f"--import {m}: {type(e).__name__}: {e}") from None


def _main(argv: Optional[List[str]]) -> int:
    args = _parser().parse_args(argv)
    import_modules(args.imports)
    chosen = dict(workloads=args.workloads, policies=args.policies, backends=args.backends, active=args.active)
    if args.action == "record":
        check_writable(args.baseline)
        doc = record(select_cells(**chosen), rounds=args.rounds, steps=args.steps, seed=args.seed,
                     instructions=args.instructions, imports=args.imports)
        write_atomic(args.baseline, doc)
        for c in doc["cells"]:
            instr = "-" if c["instructions_per_step"] is None else f"{c['instructions_per_step']:,}"
            print(f"{_cell(c).name():46s} instr {instr:>12s}  cpu {_median(c['cpu_us']):8.2f} us  wall "
                  f"{_median(c['wall_us']):8.2f} us  p99 {c['wall_p99_us']:8.1f} us  "
                  f"crossings {c['crossings_per_step']}")
        print(f"{PROG}: {doc['config']['instructions_note']}; wrote {args.baseline}")
        return 0
    th = Thresholds(args.max_instructions_growth, args.max_time_growth, args.max_ratio_growth, args.alpha)
    baseline = load_baseline(args.baseline)
    if args.out:
        check_writable(args.out)
    cells = None
    if any(v is not None for v in chosen.values()):
        cells = [c for c in map(_cell, baseline["cells"]) if all(
            v is None or getattr(c, k) in v for k, v in
            dict(workload=args.workloads, policy=args.policies, backend=args.backends, n_active=args.active).items())]
        if not cells:
            raise GateError("no baseline cell matches the chosen workloads, policies, backends and N")
    res = check(baseline, cells, thresholds=th, instructions=args.instructions, absolute_time=args.absolute_time,
                imports=args.imports)
    print("\n".join(res.lines))
    for n in res.notes:
        print(f"note: {n}")
    if args.out:
        write_atomic(args.out, res.doc)
    if res.regressions:
        print("\n".join("REGRESSION " + r for r in res.regressions))
        print(f"{PROG}: {len(res.regressions)} regression(s) in {len(res.lines)} cells", file=sys.stderr)
        return 1
    print(f"{PROG}: passed ({len(res.lines)} cells)")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of `tllm-sched gate`; returns the exit status (0, 1, 2 or 3; never 1 for a crash)."""
    try:
        from tllm_sched import _core

        try:
            return _main(argv)
        except (RunFailure, _core.SchedulingError) as e:
            print(f"{PROG}: run failed: {e}", file=sys.stderr)
            return 3
    except GateError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001  a crash is "could not go on", never "regression"
        print(f"{PROG}: run failed: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return 3
