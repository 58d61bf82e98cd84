"""bench/fused_vs_two_stage.py: the fused single pass against the two-stage mode, same backend.

    python bench/fused_vs_two_stage.py [--active 1024,4096] [--workloads decode,mixed,reuse] [--steps 1000]
                                       [--backends cpp,python] [--out FILE]

For each cell of the default synthetic grid (tllm_sched/bench_workloads.py: decode and mixed, GNE
and MU) it builds one engine per (backend, mode) from the same seed and steps them all in turn,
step by step, so machine drift hits every mode alike; only the scheduler call is timed (thread CPU
time). Prints (and with --out writes) a markdown table: median, mean and p99 µs per step of each
mode, fused / two-stage on the same backend, and python / cpp in each mode. The two modes make different
decisions only where design.md's "The fused mode" says so; on this grid the batch never exceeds
the budget, so both schedule the same requests.
"""

from __future__ import annotations

import argparse
import gc

import numpy as np

from tllm_sched import bench_workloads as wl


def run_cell(workload: str, policy: str, n: int, backends, steps: int, warmup: int, seed: int) -> dict:
    pool = wl._pool(seed)
    case = wl.SyntheticCase(workload, policy, n, steps, warmup, seed)
    steps, warmup = wl.measured_steps(case, "cpp"), wl.warmup_steps(case)  # the reuse workload: fewer
    engines = {}
    for fused in (False, True):
        for b in backends:
            case = wl.SyntheticCase(workload, policy, n, steps, warmup, seed, fused)
            engines[(b, fused)] = wl._build_synthetic(case, b, pool)
    times = {k: [] for k in engines}

    def one(key, record):
        st, src = engines[key]
        r = st.step()
        if r.finished.size and src is not None:
            wl._refill(st, src, int(r.finished.size))
        if record:
            times[key].append(r.cpu_ns)

    gc.collect()
    keys = list(engines)
    for _ in range(warmup):
        for k in keys:
            one(k, False)
    for i in range(steps):
        shift = i % len(keys)
        for k in keys[shift:] + keys[:shift]:
            one(k, True)
    return {k: (float(np.median(v)) / 1e3, float(np.mean(v)) / 1e3, float(np.percentile(v, 99)) / 1e3)
            for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--active", default="1024,4096")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--backends", default="cpp,python")
    p.add_argument("--workloads", default=",".join(wl.WORKLOADS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out")
    a = p.parse_args()
    backends = a.backends.split(",")
    rows = ["| workload, policy | N | backend | two-stage median / mean / p99 µs | fused median / mean / p99 µs "
            "| fused / two-stage (median) |", "|---|---:|---|---:|---:|---:|"]
    ratios = []
    for workload in a.workloads.split(","):
        for policy in wl.POLICIES:
            for n in [int(x) for x in a.active.split(",")]:
                r = run_cell(workload, policy, n, backends, a.steps, a.warmup, a.seed)
                short = "GNE" if policy == "GUARANTEED_NO_EVICT" else "MU"
                for b in backends:
                    (m2, a2, p2), (mf, af, pf) = r[(b, False)], r[(b, True)]
                    rows.append(f"| {workload}, {short} | {n:,} | {b} | {m2:.1f} / {a2:.1f} / {p2:.0f} "
                                f"| {mf:.1f} / {af:.1f} / {pf:.0f} | {mf / m2:.2f} |")
                if "cpp" in backends and "python" in backends:
                    ratios.append(f"| {workload}, {short} | {n:,} | {r[('python', True)][0] / r[('cpp', True)][0]:.2f} "
                                  f"| {r[('python', False)][0] / r[('cpp', False)][0]:.2f} |")
    text = "\n".join(rows)
    if ratios:
        text += ("\n\n| workload, policy | N | fused: python / cpp (median) | two-stage: python / cpp (median) |\n"
                 "|---|---:|---:|---:|\n" + "\n".join(ratios))
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
