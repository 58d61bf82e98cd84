"""tllm_sched/bench.py: `tllm-sched bench` (`python -m tllm_sched bench`): scheduler host overhead.

    tllm-sched bench [--quick] [--workloads decode,mixed] [--policies GNE,MU] [--backends cpp,python,...]
                     [--active 64,256,1024,4096] [--steps N] [--warmup N] [--seed N] [--out DIR]
    tllm-sched bench --trace FILE [--trace-limit N] [--max-steps N] [--policies P] [engine options]
    tllm-sched bench --prompt-length-sweep [1024,4096,16384,65536] [--policies P] [--steps N]

The workloads and the simulated executor are in bench_workloads.py, the outputs in
bench_report.py. Every step's decisions are compared across the backends (a checksum of the
output slot arrays): a difference ends the run (exit 3, naming the step). To gate a change
against a saved baseline, use `tllm-sched gate` (gate.py). Exit status: 0 success,
2 invalid input (one-line message, no traceback), 3 a run that started
but could not go on.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Optional

from tllm_sched import _core, cli
from tllm_sched import bench_report as report
from tllm_sched import bench_workloads as wl
from tllm_sched.bench_args import MAX_SEED, PROG, UsageError, _count, _int_in, _list, _milliseconds, _positive, _progress, _steps
from tllm_sched.files import FileProblem, check_output_dir
from tllm_sched.registry import CAPACITY_POLICIES
from tllm_sched.replay import RunFailure

DEFAULTS = dict(workloads=list(wl.WORKLOADS), policies=list(wl.POLICIES), active=[64, 256, 1024, 4096], steps=1000,
                warmup=20, seed=0)
QUICK = dict(active=[64, 512], steps=100, warmup=5)
SWEEP = dict(steps=100, warmup=2)  # --prompt-length-sweep defaults
# A full Mooncake replay takes ~7 min with all three backends on 2 cores (the python backend's
# reuse skipping dominates); by default a trace run covers its first half of the requests.
TRACE_DEFAULT_LIMIT: dict = {}  # per-format default request limits (none: every trace replays whole)
# --policies spellings besides the names: each benched policy's short name and aliases.


def _parser() -> argparse.ArgumentParser:
    from tllm_sched.scheduler import BACKENDS

    p = cli.ArgumentParser(prog=PROG, description="Measure scheduler host overhead per step on a simulated "
                                "executor: synthetic workloads (default) or a real trace (--trace). To gate a change "
                                "against a baseline: tllm-sched gate.")
    g = p.add_argument_group("what to run (--policies, --backends and --out also apply to --trace)")
    g.add_argument("--workloads", type=_list("workload", wl.WORKLOADS), help=f"{','.join(wl.WORKLOADS)} (default: all)")
    g.add_argument("--policies", type=_list("policy", wl.POLICIES),
                   help=", ".join(f"{p} ({CAPACITY_POLICIES[p].short})" for p in wl.POLICIES)
                   + " (default: all; trace: GNE)")
    g.add_argument("--backends", type=_list("backend", BACKENDS), default=list(BACKENDS),
                   help=f"default: {','.join(BACKENDS)} (unavailable ones are skipped with a notice)")
    g.add_argument("--active", type=_list("active count", convert=int, most=_core.MAX_TABLE_CAPACITY),
                   help="default: 64,256,1024,4096")
    g.add_argument("--steps", type=_steps, help=f"measured steps per case (default {DEFAULTS['steps']}; "
                   "python-naive gets fewer above 512 active)")
    g.add_argument("--warmup", type=_steps, help=f"unmeasured steps first, the first two also counting "
                   f"crossings (default {DEFAULTS['warmup']})")
    g.add_argument("--seed", type=_int_in(0, MAX_SEED), help="workload seed (default 0)")
    g.add_argument("--quick", action="store_true", help="a run under 20 seconds: 64 and 512 active, 100 steps")
    g.add_argument("--fused", action="store_true", help="the fused single pass (SchedulerConfig(fused=True)), "
                   "TensorRT-LLM's 2026 UnifiedScheduler, instead of capacity then micro-batch")
    g.add_argument("--out", help="output folder (default bench-results/, for a trace bench-results/trace-FORMAT/)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    g.add_argument("--no-plot", action="store_true", help="do not draw report.png (skips importing matplotlib)")
    t = p.add_argument_group("trace run")
    t.add_argument("--trace", metavar="FILE", help="replay a Mooncake JSONL or Azure CSV trace (format detected)")
    t.add_argument("--trace-limit", type=_count, metavar="N", help="only the first N requests; 0: all (default: all)")
    t.add_argument("--max-steps", type=_steps, default=wl.TraceOptions.max_steps,
                   help=f"stop a trace run after this many steps (default {wl.TraceOptions.max_steps:,})")
    t.add_argument("--num-blocks", type=_int_in(1, _core.MAX_NUM_BLOCKS), default=wl.TraceOptions.num_blocks, help="KV blocks (default 16384)")
    t.add_argument("--tokens-per-block", type=_int_in(1, _core.MAX_REQUEST_TOKENS), default=wl.TraceOptions.tokens_per_block, help="default 64")
    t.add_argument("--max-num-requests", type=_int_in(1, _core.MAX_TABLE_CAPACITY), default=wl.TraceOptions.max_num_requests,
                   help="also max_batch_size (default 256)")
    t.add_argument("--max-num-tokens", type=_positive, default=wl.TraceOptions.max_num_tokens, help="default 8192")
    t.add_argument("--reuse", choices=("auto", "on", "off"), default="auto", help="KV reuse (auto: on for Mooncake)")
    t.add_argument("--step-base-ms", type=_milliseconds, default=wl.TraceOptions.step_base_ms,
                   help="step-time model: fixed ms per step (default 15)")
    t.add_argument("--step-token-ms", type=_milliseconds, default=wl.TraceOptions.step_token_ms,
                   help="step-time model: ms per computed token (default 0.02)")
    w = p.add_argument_group("prompt-length sweep (--policies, --backends, --steps, --warmup, --seed, --out apply)")
    w.add_argument("--prompt-length-sweep", nargs="?", const=list(wl.SWEEP_LENGTHS), metavar="LENGTHS",
                   type=_list("prompt length", convert=int, most=_core.MAX_REQUEST_TOKENS),
                   help="instead of the grid: cost per step against the length of a cached shared prefix "
                   f"(default {','.join(map(str, wl.SWEEP_LENGTHS))} tokens; {SWEEP['steps']} steps; policy GNE)")
    from tllm_sched import bench_dp

    bench_dp.add_arguments(p)
    p.add_argument("--compare", help=argparse.SUPPRESS)  # gone: answered with a pointer to `tllm-sched gate`
    return p


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


def _ready(args, cases, check, default_out: str) -> None:
    """The checks before a run starts (UsageError, exit 2): every case within the C++ core's size
    limits (`check(case)` raises ValueError), and the output folder (`--out`, else `default_out`)
    writable, so a long run never loses its results to a bad path."""
    for case in cases:
        try:
            check(case)
        except ValueError as e:
            raise UsageError(str(e)) from None
    args.out = args.out or default_out
    try:
        check_output_dir(args.out)
    except FileProblem as e:
        raise UsageError(f"--out {e}") from None


def run_synthetic(args) -> dict:
    backends = _backends(args)
    cases = [wl.SyntheticCase(w, p, n, args.steps, args.warmup, args.seed, args.fused)
             for w in args.workloads for p in args.policies for n in args.active]
    _ready(args, cases, wl.check_synthetic_case, "bench-results")
    per_case = lambda c: (wl.warmup_steps(c) * len(backends)  # noqa: E731
                          + sum(wl.measured_steps(c, b) for b in backends))
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
    notes += _fewer_steps_notes(cases, backends)
    if any(r["crossings_per_step"] is None for r in results):
        notes.append("crossings n/a: no step of that case was counted")
    return _doc("synthetic", results, notes, dict(
        workloads=args.workloads, policies=args.policies, backends=backends, active=args.active, steps=args.steps,
        warmup=args.warmup, seed=args.seed, quick=args.quick, fused=args.fused, tokens_per_block=wl.TOKENS_PER_BLOCK,
        chunk_unit=wl.CHUNK_UNIT, max_num_tokens="max(8192, 2N)", max_num_requests="N"),
        wall_s=time.perf_counter() - t0)


def _fewer_steps_notes(cases: List[wl.SyntheticCase], backends: List[str]) -> List[str]:
    """One note per (workload, backend) measured on fewer steps than --steps somewhere, and one per
    workload warmed up on fewer than --warmup."""
    fewer: dict = {}
    for c in cases:
        for b in [*backends, "warm-up"]:
            k = wl.warmup_steps(c) if b == "warm-up" else wl.measured_steps(c, b)
            if k < (c.warmup if b == "warm-up" else c.steps):
                fewer.setdefault((c.workload, b), {})[c.n_active] = k
    return [f"{w}: {'fewer warm-up steps' if b == 'warm-up' else f'{b} measured on fewer steps'} at large N ("
            + ", ".join(f"N={n}: {k}" for n, k in ks.items()) + ")" for (w, b), ks in fewer.items()]


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
    _ready(args, [trace], lambda t: wl.check_trace_fits(t, args.tokens_per_block, args.num_blocks),
           os.path.join("bench-results", f"trace-{fmt}"))
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
                              args.max_num_tokens, reuse, args.step_base_ms, args.step_token_ms, args.max_steps,
                              fused=args.fused)
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


def run_prompt_length_sweep(args) -> dict:
    """The prompt-length sweep: one unchanged state per prefix length, scheduled again and again."""
    backends = _backends(args)
    policies = args.policies or ["GUARANTEED_NO_EVICT"]
    steps, warmup = args.steps or SWEEP["steps"], args.warmup or SWEEP["warmup"]
    seed = 0 if args.seed is None else args.seed
    cases = [wl.SweepCase(n, p, steps, warmup, seed) for p in policies for n in args.prompt_length_sweep]
    _ready(args, cases, wl.check_sweep_case, os.path.join("bench-results", report.SWEEP))
    update, close = _progress(args, sum(len(backends) * (c.warmup + c.steps) for c in cases), "pass")
    t0 = time.perf_counter()
    results: List[dict] = []
    try:
        for case in cases:
            results += wl.run_sweep_case(case, backends, update)
    finally:
        close()
    report.add_ratios(results)
    wl.add_growth(results)
    c = cases[0]
    notes = [f"each prefix length: {c.running} running generations and {c.waiting} waiting prompts of one family "
             f"(the prefix, then {c.suffix} tokens of their own), the prefix cached; the same state scheduled "
             f"{1 + warmup + steps} times without executing, backends interleaved; the first pass is reported "
             f"apart (first_cpu_us); growth: CPU median over the shortest prefix's; wall time "
             f"{time.perf_counter() - t0:.1f} s"]
    return _doc(report.SWEEP, results, notes, dict(
        prompt_lengths=args.prompt_length_sweep, policies=policies, backends=backends, steps=steps, warmup=warmup,
        seed=seed, running=c.running, waiting=c.waiting, suffix=c.suffix, tokens_per_block=wl.TOKENS_PER_BLOCK),
        wall_s=time.perf_counter() - t0)


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
    if args.prompt_length_sweep and args.trace:
        raise UsageError("--prompt-length-sweep runs alone (not with --trace)")
    if args.dp_ranks:
        from tllm_sched import bench_dp

        return bench_dp.run(args)
    if args.router or args.adp_balance:
        raise UsageError("--router and --adp-balance need --dp-ranks N")
    if args.prompt_length_sweep:
        doc = run_prompt_length_sweep(args)
    elif args.trace:
        doc = run_trace(args)
    else:
        _resolve(args)
        doc = run_synthetic(args)
    print(report.table_for(doc))
    for n in doc["notes"]:
        print(f"note: {n}")
    try:  # all files or none (the folder was probed before the run)
        paths = report.write_outputs(doc, args.out, plot=not args.no_plot)
    except OSError as e:
        raise RunFailure(f"cannot write the results to {args.out}: {e.strerror or e}") from None
    print("wrote " + ", ".join(paths))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of `tllm-sched bench`; returns the exit status."""
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
        return cli.INTERRUPTED
