"""tllm_sched/bench_dp.py: `tllm-sched bench --dp-ranks N`: attention data parallelism, N ranks
simulated in one process (tllm_sched.attention_dp.simulation).

    tllm-sched bench --trace FILE --dp-ranks N [--router round-robin,load,kv-aware] [--adp-balance on,off]
                     [--route-window 256] [--max-num-active-requests N] [trace engine options]
    tllm-sched bench --dp-ranks N [--dp-new 256] [--dp-repeats 2000]

With a trace: one replay per (router, context balancing) pair, side by side: the router's cost per
step (µs, and its share of each rank's scheduling work per step), collectives per step (exactly 1),
the balance (mean over steps of mean over max of the ranks' tokens computed, TensorRT-LLM's ratio),
each rank's reuse hit rate, and the totals. Without a trace: each router's cost with N ranks and
--dp-new new requests, interleaved with one scheduling step of 1,024 decoding requests (cpp backend,
a running engine), the cost it must stay under; thread CPU and wall time of each. Writes
results.json, report.md and report.png (matplotlib) atomically.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from typing import Dict, List

import numpy as np

from tllm_sched import bench_report as report

FORMAT = "tllm_sched.bench_dp/1"
_BALANCE = {"on": True, "off": False}


def add_arguments(parser) -> None:
    """The --dp-* options of `tllm-sched bench`."""
    from tllm_sched.attention_dp import ROUTERS
    from tllm_sched.bench_args import _list, _positive

    g = parser.add_argument_group("attention data parallelism (simulated in one process)")
    g.add_argument("--dp-ranks", type=_positive, metavar="N", help="simulate N attention-DP ranks: with --trace, "
                   "replay it (each rank schedules with the first of --backends); alone, measure the routers' cost")
    g.add_argument("--router", type=_list("router", list(ROUTERS)), help="round-robin, load, kv-aware, or a list "
                   "to compare side by side (default: load)")
    g.add_argument("--adp-balance", type=_list("--adp-balance value", list(_BALANCE)), metavar="on,off",
                   help="context balancing on, off, or on,off to compare (default: on)")
    g.add_argument("--router-backend", choices=("cpp", "python"), default="cpp",
                   help="the routers' greedy loops (default cpp)")
    g.add_argument("--route-window", type=_positive, default=256, metavar="N",
                   help="queued requests routed per step at most (default 256)")
    g.add_argument("--max-num-active-requests", type=_positive, metavar="N", help="per-rank cap of the routers "
                   "(default: --max-num-requests)")
    g.add_argument("--dp-new", type=_positive, default=256, metavar="N",
                   help="router cost: new requests per step (default 256)")
    g.add_argument("--dp-repeats", type=_positive, default=2000, metavar="N",
                   help="router cost: timed calls each (default 2000)")


def run(args) -> int:
    """`tllm-sched bench --dp-ranks N ...`; returns the exit status (raises bench.UsageError)."""
    if args.trace:
        doc = run_trace(args)
        out = args.out or os.path.join("bench-results", f"dp-trace-{doc['trace']['format']}")
        print(format_trace_table(doc["results"]))
    else:
        doc = run_router_cost(args)
        out = args.out or os.path.join("bench-results", "dp-router-cost")
        print(format_cost_table(doc["results"]))
    for n in doc["notes"]:
        print(f"note: {n}")
    print("wrote " + ", ".join(write_outputs(doc, out, plot=not args.no_plot)))
    return 0


def _scheduler_backend(args) -> str:
    return args.backends[0]


# ----------------------------------------------------------------------------------- trace replay


def run_trace(args) -> dict:
    from tllm_sched.attention_dp import ContextBalance
    from tllm_sched.attention_dp.simulation import AdpOptions, simulate
    from tllm_sched.bench_args import PROG, UsageError, _progress
    from tllm_sched.bench_workloads import TraceOptions
    from tllm_sched.traces import TraceError, load_trace

    try:
        trace = load_trace(args.trace, limit=args.trace_limit or None)
    except TraceError as e:
        raise UsageError(str(e)) from None
    policy = (args.policies or ["GUARANTEED_NO_EVICT"])[0]
    engine = TraceOptions(policy, args.tokens_per_block, args.num_blocks, args.max_num_requests, args.max_num_tokens,
                          {"auto": None, "on": True, "off": False}[args.reuse], args.step_base_ms, args.step_token_ms,
                          args.max_steps)
    backend = _scheduler_backend(args)
    results, series = [], {}
    for balance in args.adp_balance or ["on"]:
        for router in args.router or ["load"]:
            opts = AdpOptions(dp_ranks=args.dp_ranks, router=router, router_backend=args.router_backend,
                              balance=ContextBalance() if _BALANCE[balance] else None,
                              route_window=args.route_window, max_num_active_requests=args.max_num_active_requests,
                              scheduler_backend=backend)
            update, close = _progress(args, None, "step")
            try:
                res = simulate(trace, opts, engine, progress=update)
            finally:
                close()
            label = f"{router}, balance {balance}"
            print(f"{PROG}: {label}: {res.steps:,} steps in {res.wall_s:.1f} s", file=sys.stderr)
            row, series[label] = _trace_metrics(res, router, balance)
            results.append(row)
    cfg = {k: getattr(engine, k) for k in engine.__dataclass_fields__}
    cfg.update(dp_ranks=args.dp_ranks, router_backend=args.router_backend, scheduler_backend=backend,
               route_window=args.route_window, max_num_active_requests=args.max_num_active_requests or
               engine.max_num_requests, context_balance=dict(timeout_iters=ContextBalance.timeout_iters,
                                                             batching_wait_iters=ContextBalance.batching_wait_iters))
    notes = [f"{len(trace):,} requests{f' (--trace-limit {args.trace_limit})' if args.trace_limit else ''}, "
             f"{float(trace.arrival_ms[-1]) / 1e3:.0f} s of arrivals, {args.dp_ranks} ranks simulated in one process",
             "step-time model: a step lasts step_base_ms + step_token_ms x the largest tokens computed by any rank "
             "(the ranks synchronise every step); a request is routed in the step after it arrives and scheduled "
             "in the next",
             "router us: the router call per rank per step; share: of the rank's host work per step (schedule, "
             "record with the prefix probe, parse, context balance, route)",
             "balance: mean over steps (with any tokens) of mean / max of the ranks' tokens computed "
             "(TensorRT-LLM's balance ratio); SOL: the same weighted by step time, sum(time x balance) / sum(time) "
             "(TensorRT-LLM's actual / speed-of-light throughput)",
             "tokens: computed over the run, reused prefix excluded; latency: arrival to last token, simulated"]
    if any(r["truncated"] for r in results):
        notes.append(f"TRUNCATED: stopped at --max-steps {args.max_steps:,} before every request finished")
    return dict(format=FORMAT, kind="dp-trace", created=report.now_iso(), machine=report.machine_info(), config=cfg,
                notes=notes, results=results, series=series,
                trace=dict(path=os.path.abspath(args.trace), format=trace.format, requests=len(trace)))


def _arr(a) -> np.ndarray:
    return np.frombuffer(a, dtype=np.int64) if len(a) else np.zeros(0, dtype=np.int64)


def _trace_metrics(res, router: str, balance: str) -> tuple:
    ranks = res.ranks
    timers = {k: np.stack([_arr(r.log.timers[k]) for r in ranks]) for k in ranks[0].log.timers}
    route = timers["route_ns"]
    host = timers["sched_ns"] + timers["record_ns"] + timers["parse_ns"] + timers["balance_ns"] + route
    tokens = np.stack([_arr(r.log.tokens) for r in ranks])  # (ranks, steps)
    peak = tokens.max(axis=0)
    busy = peak > 0
    ratio = tokens.mean(axis=0)[busy] / peak[busy]
    # TensorRT-LLM's speed-of-light ratio: sum of step time x balance over the elapsed time, with the
    # step time of the model (the slowest rank's tokens decide)
    e = res.ranks[0].engine_opts
    step_ms = e.step_base_ms + e.step_token_ms * peak[busy]
    latency = np.concatenate([np.frombuffer(r.log.latency_ms, dtype=np.float64) for r in ranks]) / 1e3
    stats = [r.engine.kv.get_kv_cache_stats() for r in ranks]
    reused = sum(int(s["reused_blocks"]) for s in stats)
    missed = sum(int(s["missed_blocks"]) for s in stats)
    held = np.array(ranks[0].log.run_contexts, dtype=bool)
    row = dict(
        router=router, balance=balance, dp_ranks=len(ranks), steps=res.steps, truncated=res.truncated,
        collectives=res.collectives, collectives_per_step=res.collectives / max(res.steps, 1),
        route_median_us=_us(route, 50), route_mean_us=float(route.mean()) / 1e3 if route.size else None,
        route_p99_us=_us(route, 99), route_share=float(route.sum() / host.sum()) if host.sum() else None,
        decide_median_us=_us(timers["parse_ns"] + timers["balance_ns"] + route, 50),
        sched_median_us=_us(timers["sched_ns"], 50), record_median_us=_us(timers["record_ns"], 50),
        host_median_us=_us(host, 50),
        balance_ratio=float(ratio.mean()) if ratio.size else None,
        balance_sol=float((step_ms * ratio).sum() / step_ms.sum()) if ratio.size else None,
        latency_mean_s=float(latency.mean()) if latency.size else None,
        latency_p99_s=float(np.percentile(latency, 99)) if latency.size else None,
        reuse_hit_rate=reused / (reused + missed) if reused + missed else 0.0,
        rank_hit_rates=[float(s["cache_hit_rate"]) for s in stats],
        rank_tokens=tokens.sum(axis=1).tolist(), tokens_total=int(tokens.sum()),
        requests_done=int(sum(_arr(r.log.finished).sum() for r in ranks)),
        contexts_held_steps=int((~held).sum()), simulated_s=ranks[0].clock / 1e3, wall_s=res.wall_s)
    return row, _series(ranks[0], tokens, busy)


def _us(ns: np.ndarray, q: float):
    return float(np.percentile(ns, q)) / 1e3 if ns.size else None


def _series(rank0, tokens: np.ndarray, busy: np.ndarray, points: int = 200) -> dict:
    """Balance ratio and the share of steps holding contexts, in at most `points` windows of steps."""
    n = tokens.shape[1]
    edges = np.unique(np.linspace(0, n, min(points, n) + 1).round().astype(int)) if n else np.zeros(1, int)
    mean, peak = tokens.mean(axis=0), tokens.max(axis=0)
    held = ~np.array(rank0.log.run_contexts, dtype=bool)
    out = {"step": [], "balance": [], "held": []}
    for a, b in zip(edges[:-1], edges[1:]):
        w = busy[a:b]
        out["step"].append(int(b))
        out["balance"].append(round(float((mean[a:b][w] / peak[a:b][w]).mean()), 4) if w.any() else None)
        out["held"].append(round(float(held[a:b].mean()), 4))
    return out


def format_trace_table(results: List[dict]) -> str:
    head = ("router", "balance", "steps", "route us med/p99", "share", "coll/step", "balance", "SOL", "hit rate",
            "rank hit rates", "tokens", "latency s mean/p99", "done")
    rows = [head]
    for r in results:
        rows.append((r["router"], r["balance"], f"{r['steps']:,}", f"{_f(r['route_median_us'])}/{_f(r['route_p99_us'])}",
                     _pct(r["route_share"]), f"{r['collectives_per_step']:.2f}", _pct(r["balance_ratio"]),
                     _pct(r["balance_sol"]), _pct(r["reuse_hit_rate"]),
                     " ".join(f"{h:.3f}" for h in r["rank_hit_rates"]), f"{r['tokens_total']:,}",
                     f"{_f(r['latency_mean_s'], '.2f')}/{_f(r['latency_p99_s'], '.2f')}", str(r["requests_done"])))
    return _text_table(rows, left=2)


def _f(v, spec=".1f") -> str:
    return "-" if v is None else format(v, spec)


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _text_table(rows, left: int) -> str:
    """rows[0] is the header; the bench's own table layout."""
    return report._text_table(tuple(rows[0]), [tuple(r) for r in rows[1:]], left)


# -------------------------------------------------------------------------------------- router cost


def cost_case(world: int, n: int, seed: int = 0) -> tuple:
    """Gathered states of `world` ranks and a queue head of `n` new requests for the router-cost
    benchmark: Mooncake-like sizes (prompts of 512 to 16,384 tokens, 8 prefix groups, a third of the
    requests with a cached prefix on one or two ranks), 32 to 128 active requests per rank."""
    from tllm_sched.attention_dp import NewRequests
    from tllm_sched.attention_dp.rank_state import pack_record, parse_records, record_length, stack_records

    rng = np.random.default_rng(seed)
    ids = np.arange(10_000, 10_000 + n, dtype=np.int64)
    groups = rng.integers(0, 2**63 - 1, 8, dtype=np.int64)  # fingerprints are 63-bit hashes of a prefix
    new = NewRequests.make(ids, rng.integers(512, 16_385, n), fingerprint=groups[rng.integers(0, 8, n)])
    matches = np.zeros((world, n), dtype=np.int64)
    hit = np.flatnonzero(rng.random(n) < 1 / 3)
    for i in hit:
        for r in rng.choice(world, size=min(world, int(rng.integers(1, 3))), replace=False):
            matches[r, i] = 512 * int(rng.integers(1, max(2, new.num_tokens[i] // 512)))
    length = record_length(n)
    active = rng.integers(32, 129, world)
    recs = [pack_record(np.zeros(length, dtype=np.int64), rank=r, step=0, active_requests=int(active[r]),
                        active_tokens=int(active[r]) * 7000, uncached_tokens=int(active[r]) * 4000, free_blocks=1000,
                        waiting=0, context=1, generation=int(active[r]) - 1, scheduled_tokens=1000, last_tokens=1000,
                        queue_ids=ids, matches=matches[r]) for r in range(world)]
    gathered = stack_records(recs)
    return gathered, parse_records(gathered, length=length, step=0), new


_YARDSTICK = "decode step, 1,024 active (cpp)"


def _timed(f) -> tuple:
    """(wall ns, thread CPU ns) of one call, read as bench_workloads.SimState.schedule reads them."""
    c0 = time.thread_time_ns()  # outside the wall-clock window: a thread clock read is a syscall
    t0 = time.perf_counter_ns()
    f()
    t1 = time.perf_counter_ns()
    c1 = time.thread_time_ns()
    return t1 - t0, c1 - c0


def run_router_cost(args) -> dict:
    """Each router's cost per step, interleaved round by round with the yardstick: one scheduling
    step of 1,024 decoding requests (cpp backend, GUARANTEED_NO_EVICT) of a running engine, each
    step executed before the next (the `sched` time `tllm-sched bench` reports for the decode
    workload at 1,024 active), all timed alike: wall clock and thread CPU time around one call."""
    from tllm_sched.attention_dp import ContextBalance, ContextBalancer, make_router
    from tllm_sched.attention_dp.rank_state import parse_records
    from tllm_sched.bench_workloads import build_synthetic_state

    world, n, reps = args.dp_ranks, args.dp_new, args.dp_repeats
    gathered, states, new = cost_case(world, n, args.seed or 0)
    engine = build_synthetic_state("decode", "GUARANTEED_NO_EVICT", 1024, "cpp", steps=reps + 1)  # none finishes
    balancer = ContextBalancer(ContextBalance(), max_batch_size=1024)
    cap = max(256, int(states.active_requests.max()) + n)
    calls = {"parse records": lambda: parse_records(gathered, length=gathered.shape[1], step=0),
             "context balance": lambda: balancer.run_contexts(states.context, states.generation)}
    for name in ("round-robin", "load", "kv-aware"):
        for backend in (("cpp",) if name == "round-robin" else ("cpp", "python")):
            router = make_router(name, backend)
            reps_b = reps if backend == "cpp" else max(20, reps // 20)
            calls[f"router {name} ({backend})"] = (lambda r=router: r.route(states, new, cap), reps_b)
    plan = {k: (v if isinstance(v, tuple) else (v, reps)) for k, v in calls.items()}
    wall: Dict[str, list] = {k: [] for k in [_YARDSTICK, *plan]}
    cpu: Dict[str, list] = {k: [] for k in wall}
    for f, _ in plan.values():
        f()  # warm up
    t0 = time.perf_counter()
    for i in range(reps):  # interleaved: machine drift hits every contender alike
        step = engine.step()  # its schedule timed inside, its execution not
        wall[_YARDSTICK].append(step.sched_ns)
        cpu[_YARDSTICK].append(step.cpu_ns)
        for k, (f, k_reps) in plan.items():
            if i % max(1, reps // k_reps) or len(wall[k]) >= k_reps:
                continue
            w, c = _timed(f)
            wall[k].append(w)
            cpu[k].append(c)
    us = lambda ns: np.array(ns, dtype=np.int64) / 1e3  # noqa: E731
    ref = float(np.median(us(cpu[_YARDSTICK])))
    results = []
    for k in wall:
        w, c = us(wall[k]), us(cpu[k])
        results.append(dict(name=k, calls=int(w.size), median_us=float(np.median(w)), mean_us=float(w.mean()),
                            p99_us=float(np.percentile(w, 99)), cpu_median_us=float(np.median(c)),
                            cpu_mean_us=float(c.mean()), cpu_p99_us=float(np.percentile(c, 99)),
                            ratio_to_decode_step=float(np.median(c)) / ref))
    notes = [f"{world} ranks, {n} new requests per step (prompts 512-16,384 tokens, 8 prefix groups, a third "
             f"cached on one or two ranks), per-rank cap {cap}; {reps} rounds interleaved, python backends timed "
             f"on every {max(1, reps // max(20, reps // 20))}th; wall time {time.perf_counter() - t0:.1f} s",
             "yardstick: one scheduling step of 1,024 decoding requests (cpp backend, GUARANTEED_NO_EVICT) of a "
             "running engine, executed between rounds: the sched time `tllm-sched bench` reports for the decode "
             "workload at 1,024 active; every row is timed alike around one call (wall clock, thread CPU time)",
             "x decode step: thread CPU median over the yardstick's thread CPU median (the bar: <= 1)"]
    return dict(format=FORMAT, kind="dp-router-cost", created=report.now_iso(), machine=report.machine_info(),
                config=dict(dp_ranks=world, new_requests=n, repeats=reps, seed=args.seed or 0, cap=cap),
                notes=notes, results=results)


def format_cost_table(results: List[dict]) -> str:
    rows = [("what", "calls", "cpu med us", "cpu mean", "cpu p99", "wall med us", "wall p99", "x decode step")]
    for r in results:
        rows.append((r["name"], str(r["calls"]), _f(r["cpu_median_us"]), _f(r["cpu_mean_us"]), _f(r["cpu_p99_us"]),
                     _f(r["median_us"]), _f(r["p99_us"]), _f(r["ratio_to_decode_step"], ".2f")))
    return _text_table(rows, left=1)


# ------------------------------------------------------------------------------------------- outputs


def _atomic_write(path: str, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_outputs(doc: dict, out_dir: str, plot: bool = True) -> List[str]:
    """results.json, report.md and (with matplotlib) report.png, each replaced atomically."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, n) for n in ("results.json", "report.md", "report.png")]
    _atomic_write(paths[0], lambda f: f.write((json.dumps(doc, indent=1) + "\n").encode()))
    drawn = plot and _plot(doc, paths[2])
    _atomic_write(paths[1], lambda f: f.write(_markdown(doc, drawn).encode()))
    if not drawn and os.path.exists(paths[2]):
        os.remove(paths[2])  # a stale picture of an earlier run would mislead
    return paths if drawn else paths[:2]


def _markdown(doc: dict, drawn: bool) -> str:
    m = doc["machine"]
    lines = [f"# tllm_sched attention-DP benchmark ({doc['kind']})", "",
             f"{doc['created']} · {m['cpu']} ({m['cpu_count']} cores) · Python {m['python']} · numpy {m['numpy']} · "
             f"tllm_sched {m['tllm_sched']}" + (f" ({m['git_commit'][:12]})" if m.get("git_commit") else ""), ""]
    lines += [f"- {n}" for n in doc["notes"]] + [""]
    if doc["kind"] == "dp-trace":
        t = doc["trace"]
        lines += [f"Trace `{t['path']}` ({t['format']}), {t['requests']:,} requests.", "",
                  "| router | balance | steps | route µs median / p99 | route share | collectives/step | balance | "
                  "SOL | reuse hit rate | per-rank hit rates | tokens computed | latency s mean / p99 | done | "
                  "simulated s |", "|---|---|" + "---:|" * 12]
        for r in doc["results"]:
            lines.append(f"| {r['router']} | {r['balance']} | {r['steps']:,} | {_f(r['route_median_us'])} / "
                         f"{_f(r['route_p99_us'])} | {_pct(r['route_share'])} | {r['collectives_per_step']:.2f} | "
                         f"{_pct(r['balance_ratio'])} | {_pct(r['balance_sol'])} | {_pct(r['reuse_hit_rate'])} | "
                         f"{' '.join(f'{h:.3f}' for h in r['rank_hit_rates'])} | {r['tokens_total']:,} | "
                         f"{_f(r['latency_mean_s'], '.2f')} / {_f(r['latency_p99_s'], '.2f')} | "
                         f"{r['requests_done']:,} | {r['simulated_s']:.0f} |")
    else:
        lines += ["| what | calls | CPU µs median | CPU mean | CPU p99 | wall µs median | wall mean | wall p99 | "
                  "× decode step (CPU) |", "|---|" + "---:|" * 8]
        for r in doc["results"]:
            lines.append(f"| {r['name']} | {r['calls']} | {_f(r['cpu_median_us'])} | {_f(r['cpu_mean_us'])} | "
                         f"{_f(r['cpu_p99_us'])} | {_f(r['median_us'])} | {_f(r['mean_us'])} | {_f(r['p99_us'])} | "
                         f"{_f(r['ratio_to_decode_step'], '.2f')} |")
    return "\n".join(lines + [""] + report.markdown_tail(doc, drawn))


def _plot(doc: dict, path: str) -> bool:
    plt = report.pyplot()
    if plt is None:
        return False
    res = doc["results"]
    if doc["kind"] == "dp-trace":
        fig, ((a1, a2), (a3, a4)) = plt.subplots(2, 2, figsize=(13, 8))
        for label, s in doc["series"].items():
            pts = [(x, y) for x, y in zip(s["step"], s["balance"]) if y is not None]
            if pts:
                a1.plot(*zip(*pts), label=label)
        a1.set(xlabel="step", ylabel="balance (mean / max tokens)", ylim=(0, 1.05), title="balance over the run")
        a1.legend(fontsize="small")
        labels = [f"{r['router']}\nbalance {r['balance']}" for r in res]
        x = np.arange(len(res))
        width = 0.8 / max(1, res[0]["dp_ranks"])
        for k in range(res[0]["dp_ranks"]):
            a2.bar(x + k * width - 0.4 + width / 2, [r["rank_hit_rates"][k] for r in res], width, label=f"rank {k}")
        a2.set(xticks=x, xticklabels=labels, ylabel="reuse hit rate", title="reuse hit rate per rank")
        a2.legend(fontsize="small")
        a3.bar(x - 0.27, [r["balance_ratio"] or 0 for r in res], 0.27, label="balance")
        a3.bar(x, [r["balance_sol"] or 0 for r in res], 0.27, label="SOL (time-weighted balance)")
        a3.bar(x + 0.27, [r["reuse_hit_rate"] for r in res], 0.27, label="reuse hit rate (all ranks)")
        a3.axhline(0.877, color="gray", linestyle=":", label="TensorRT-LLM ADP balance: 87.7%")
        a3.set(xticks=x, xticklabels=labels, ylim=(0, 1.05), title="totals")
        a3.legend(fontsize="small")
        a4.bar(x, [r["route_median_us"] or 0 for r in res], 0.5, yerr=None, label="median")
        a4.plot(x, [r["route_p99_us"] or 0 for r in res], "kv", label="p99")
        a4.set(xticks=x, xticklabels=labels, ylabel="µs per step", title="router cost per rank per step")
        a4.legend(fontsize="small")
    else:
        fig, ax = plt.subplots(figsize=(10, 5))
        names = [r["name"] for r in res]
        ax.barh(names, [r["cpu_median_us"] for r in res], xerr=None)
        ref = next(r["cpu_median_us"] for r in res if r["name"] == _YARDSTICK)
        ax.axvline(ref, color="red", linestyle=":", label="one decode step, 1,024 active (cpp)")
        ax.set(xscale="log", xlabel="thread CPU µs (median)", title=f"router cost: {doc['config']['dp_ranks']} ranks, "
               f"{doc['config']['new_requests']} new requests")
        ax.legend()
    fig.tight_layout()
    _atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return True
