"""tllm_sched/bench.py: `tllm-sched bench` (`python -m tllm_sched bench`): scheduler host overhead.

    tllm-sched bench [--quick] [--workloads decode,mixed] [--policies GNE,MU] [--backends cpp,python,...]
                     [--active 64,256,1024,4096] [--steps N] [--warmup N] [--seed N] [--out DIR]
    tllm-sched bench --trace FILE [--trace-limit N] [--max-steps N] [--policies P] [engine options]

The workloads and the simulated executor are in bench_workloads.py, the outputs in
bench_report.py. To gate a change against a saved baseline, use `tllm-sched gate` (gate.py).
Exit status: 0 success, 2 invalid input (one-line message, no traceback), 3 a run that started
but could not go on.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Optional

from tllm_sched import bench_report as report
from tllm_sched import bench_workloads as wl

PROG = "tllm-sched bench"
DEFAULTS = dict(workloads=list(wl.WORKLOADS), policies=list(wl.POLICIES), active=[64, 256, 1024, 4096], steps=1000,
                warmup=20, seed=0)
QUICK = dict(active=[64, 512], steps=100, warmup=5)
# A full Mooncake replay takes ~7 min with all three backends on 2 cores (the python backend's
# reuse skipping dominates); by default a trace run covers its first half of the requests.
TRACE_DEFAULT_LIMIT: dict = {}  # per-format default request limits (none: every trace replays whole)
ALIASES = {"GNE": "GUARANTEED_NO_EVICT", "MU": "MAX_UTILIZATION", "MAX_UTIL": "MAX_UTILIZATION"}


class UsageError(ValueError):
    """Invalid input (exit status 2)."""


def _list(kind: str, choices=None, convert=str):
    def parse(text: str):
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"empty {kind} list")
        out = []
        for t in items:
            if kind == "policy":
                t = ALIASES.get(t.upper(), t.upper())
            try:
                v = convert(t)
            except ValueError:
                raise argparse.ArgumentTypeError(f"bad {kind} {t!r}") from None
            if choices is not None and v not in choices:
                raise argparse.ArgumentTypeError(f"unknown {kind} {t!r} (choose from {', '.join(map(str, choices))})")
            if convert is int and v <= 0:
                raise argparse.ArgumentTypeError(f"{kind} must be positive, got {v}")
            out.append(v)
        return list(dict.fromkeys(out))
    return parse


def _count(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {v}")
    return v


def _parser() -> argparse.ArgumentParser:
    from tllm_sched.scheduler import BACKENDS

    p = argparse.ArgumentParser(prog=PROG, description="Measure scheduler host overhead per step on a simulated "
                                "executor: synthetic workloads (default) or a real trace (--trace). To gate a change "
                                "against a baseline: tllm-sched gate.")
    g = p.add_argument_group("what to run (--policies, --backends and --out also apply to --trace)")
    g.add_argument("--workloads", type=_list("workload", wl.WORKLOADS), help="decode,mixed (default: both)")
    g.add_argument("--policies", type=_list("policy", wl.POLICIES),
                   help="GUARANTEED_NO_EVICT (GNE), MAX_UTILIZATION (MU) (default: both; trace: GNE)")
    g.add_argument("--backends", type=_list("backend", BACKENDS), default=list(BACKENDS),
                   help="default: cpp,python,python-naive (unavailable ones are skipped with a notice)")
    g.add_argument("--active", type=_list("active count", convert=int), help="default: 64,256,1024,4096")
    g.add_argument("--steps", type=_positive, help=f"measured steps per case (default {DEFAULTS['steps']}; "
                   "python-naive gets fewer above 512 active)")
    g.add_argument("--warmup", type=_positive, help=f"unmeasured steps first, the first two also counting "
                   f"crossings (default {DEFAULTS['warmup']})")
    g.add_argument("--seed", type=int, help="workload seed (default 0)")
    g.add_argument("--quick", action="store_true", help="a run under 20 seconds: 64 and 512 active, 100 steps")
    g.add_argument("--out", help="output folder (default bench-results/, for a trace bench-results/trace-FORMAT/)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    g.add_argument("--no-plot", action="store_true", help="do not draw report.png (skips importing matplotlib)")
    t = p.add_argument_group("trace run")
    t.add_argument("--trace", metavar="FILE", help="replay a Mooncake JSONL or Azure CSV trace (format detected)")
    t.add_argument("--trace-limit", type=_count, metavar="N", help="only the first N requests; 0: all (default: all)")
    t.add_argument("--max-steps", type=_positive, default=wl.TraceOptions.max_steps,
                   help=f"stop a trace run after this many steps (default {wl.TraceOptions.max_steps:,})")
    t.add_argument("--num-blocks", type=_positive, default=wl.TraceOptions.num_blocks, help="KV blocks (default 16384)")
    t.add_argument("--tokens-per-block", type=_positive, default=wl.TraceOptions.tokens_per_block, help="default 64")
    t.add_argument("--max-num-requests", type=_positive, default=wl.TraceOptions.max_num_requests,
                   help="also max_batch_size (default 256)")
    t.add_argument("--max-num-tokens", type=_positive, default=wl.TraceOptions.max_num_tokens, help="default 8192")
    t.add_argument("--reuse", choices=("auto", "on", "off"), default="auto", help="KV reuse (auto: on for Mooncake)")
    t.add_argument("--step-base-ms", type=float, default=wl.TraceOptions.step_base_ms,
                   help="step-time model: fixed ms per step (default 15)")
    t.add_argument("--step-token-ms", type=float, default=wl.TraceOptions.step_token_ms,
                   help="step-time model: ms per computed token (default 0.02)")
    p.add_argument("--compare", help=argparse.SUPPRESS)  # gone: answered with a pointer to `tllm-sched gate`
    return p


def _progress(args, total: Optional[int], unit: str):
    """(update callback, close callback): a tqdm bar on a terminal, silence otherwise."""
    if args.no_progress or not sys.stderr.isatty():
        return wl._noop, lambda: None
    try:
        from tqdm import tqdm
    except ImportError:
        return wl._noop, lambda: None
    bar = tqdm(total=total, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)
    return bar.update, bar.close


def _resolve(args) -> None:
    """Fills unset synthetic options: --quick's, else the defaults."""
    for k, v in DEFAULTS.items():
        if getattr(args, k) is None:
            setattr(args, k, QUICK.get(k, v) if args.quick else v)


def _backends(args) -> List[str]:
    usable, notices = wl.probe_backends(args.backends)
    for n in notices:
        print(f"{PROG}: {n}", file=sys.stderr)
    if not usable:
        raise UsageError("no usable backend")
    return usable


def run_synthetic(args) -> dict:
    backends = _backends(args)
    cases = [wl.SyntheticCase(w, p, n, args.steps, args.warmup, args.seed)
             for w in args.workloads for p in args.policies for n in args.active]
    per_case = lambda c: c.warmup * len(backends) + sum(  # noqa: E731
        wl.naive_steps(c.steps, c.n_active) if b == "python-naive" else c.steps for b in backends)
    update, close = _progress(args, sum(per_case(c) for c in cases), "step")
    t0 = time.perf_counter()
    results: List[dict] = []
    try:
        for case in cases:
            results += wl.run_synthetic_case(case, backends, update)
    finally:
        close()
    report.add_ratios(results)
    notes = [f"{len(cases)} cases x {len(backends)} backends, interleaved step by step; {args.warmup} warm-up steps "
             f"each; wall time {time.perf_counter() - t0:.1f} s"]
    if "python-naive" in backends:
        fewer = [f"N={n}: {k}" for n in args.active if (k := wl.naive_steps(args.steps, n)) < args.steps]
        if fewer:
            notes.append("python-naive measured on fewer steps at large N (" + ", ".join(fewer) + " steps)")
    if any(r["crossings_per_step"] is None for r in results):
        notes.append("crossings n/a: the Scheduler facade does not count crossings (count_crossings) yet")
    return _doc("synthetic", results, notes, dict(
        workloads=args.workloads, policies=args.policies, backends=backends, active=args.active, steps=args.steps,
        warmup=args.warmup, seed=args.seed, quick=args.quick, tokens_per_block=wl.TOKENS_PER_BLOCK,
        chunk_unit=wl.CHUNK_UNIT, max_num_tokens="max(8192, 2N)", max_num_requests="N"),
        wall_s=time.perf_counter() - t0)


def run_trace(args) -> dict:
    from tllm_sched.traces import TraceError, detect_format, load_trace

    try:
        fmt = detect_format(args.trace)
        limit = args.trace_limit if args.trace_limit is not None else TRACE_DEFAULT_LIMIT.get(fmt)
        trace = load_trace(args.trace, limit=limit or None)
    except TraceError as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        raise UsageError(f"{args.trace}: {e.strerror or e}") from None
    backends = _backends(args)
    policies = args.policies or ["GUARANTEED_NO_EVICT"]
    partial = args.trace_limit is None and limit is not None and len(trace) == limit
    if partial:
        print(f"{PROG}: {fmt} trace: replaying its first {limit:,} requests by default (--trace-limit 0 for all)",
              file=sys.stderr)
    reuse = {"auto": None, "on": True, "off": False}[args.reuse]
    duration = float(trace.arrival_ms[-1]) / 1e3
    results, series, wall, opt = [], {}, 0.0, None
    for policy in policies:
        opt = wl.TraceOptions(policy, args.tokens_per_block, args.num_blocks, args.max_num_requests,
                              args.max_num_tokens, reuse, args.step_base_ms, args.step_token_ms, args.max_steps)
        update, close = _progress(args, None, "step")
        try:
            run = wl.run_trace(trace, backends, opt, update)
        finally:
            close()
        results += run["results"]
        wall += run["wall_s"]
        for b, s in run["series"].items():
            series[b if len(policies) == 1 else f"{report.POLICY_SHORT.get(policy, policy)}/{b}"] = s
    report.add_ratios(results)
    notes = [f"step-time model: step_ms = {args.step_base_ms:g} + {args.step_token_ms:g} x tokens computed "
             f"(context tokens excluding reused prefix, plus one per generating request); an idle engine jumps to "
             f"the next arrival",
             f"{len(trace)} requests{f' (--trace-limit {limit})' if limit and len(trace) == limit else ''}"
             f"{' (the default for this format; --trace-limit 0 replays all)' if partial else ''}, "
             f"{duration:.0f} s of arrivals; backends interleaved step by step; wall time {wall:.1f} s"]
    if any(r["truncated"] for r in results):
        notes.append(f"TRUNCATED: stopped at --max-steps {args.max_steps:,} before every request finished")
    cfg = {k: getattr(opt, k) for k in opt.__dataclass_fields__} | {"policy": ", ".join(policies),
                                                                   "reuse": args.reuse, "backends": backends}
    doc = _doc("trace", results, notes, cfg, wall_s=wall)
    doc["trace"] = dict(path=os.path.abspath(args.trace), format=trace.format, requests=len(trace),
                        duration_s=duration, limit=limit or None)
    doc["series"] = series
    return doc


def _doc(kind: str, results: List[dict], notes: List[str], config: dict, **extra) -> dict:
    warn = report.summary_note(results)
    return dict(format=report.FORMAT, kind=kind, created=report.now_iso(), machine=report.machine_info(),
                config=config, notes=notes + ([warn] if warn else []), results=results, **extra)


def _main(argv: Optional[List[str]]) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, message already printed)
        return int(e.code or 0)
    if args.compare is not None:
        raise UsageError("--compare is gone: gate changes with `tllm-sched gate record BASELINE.json` once, then "
                         "`tllm-sched gate check BASELINE.json`")
    if args.trace:
        doc = run_trace(args)
        out = args.out or os.path.join("bench-results", f"trace-{doc['trace']['format']}")
    else:
        _resolve(args)
        doc = run_synthetic(args)
        out = args.out or "bench-results"
    print(report.format_table(doc["results"]))
    for n in doc["notes"]:
        print(f"note: {n}")
    paths = report.write_outputs(doc, out, plot=not args.no_plot)
    print("wrote " + ", ".join(paths))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of `tllm-sched bench`; returns the exit status."""
    from tllm_sched.replay import RunFailure
    from tllm_sched import _core

    try:
        return _main(argv)
    except UsageError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    except (RunFailure, _core.SchedulingError) as e:
        print(f"{PROG}: run failed: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
