"""bench/executor_cost.py: what the executor's step costs per step, the step API against SimExecutor.

    python bench/executor_cost.py                       # 1,024 and 4,096 active, decode and mixed
    python bench/executor_cost.py --active 256,4096 --steps 500 --json out.json

Two identical engines (same seed, cpp scheduler, no reuse: the two executors then make the same
decisions, which the run checks) take turns step by step. One runs `SimExecutor.apply` (the
replay order, a synthetic token); the other runs the step API of a real loop: `Executor.prepare`
before the model, the four buffer fills a paged-attention kernel needs (block tables, slot
mapping, token ids and positions, query and sequence lengths, into caller-owned buffers), then
`Executor.commit` with one token per row. Only the executor calls are timed (perf_counter_ns);
scheduling and the release of finished requests are not. Workloads, N active requests each:
  - decode: N generating requests that never finish during the run;
  - mixed: a quarter start as 128-1,024-token prompts, prefilled in 64-token chunks under a
    max(8,192, 2N)-token budget; each finished request is replaced by a new one, so N stays put.
Run against a build without the step API (before it existed), or with --apply-only, it measures
SimExecutor.apply alone (one engine, so the comparison of builds sees the same cache footprint).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from typing import List

import numpy as np

import tllm_sched as ts
from tllm_sched.config import ChunkingConfig, SchedulerConfig
from tllm_sched.scheduler import Scheduler

TPB, CHUNK = 32, 64
HAS_STEP_API = hasattr(ts, "Executor")


class Engine:
    """A table, a KV cache, an active list, a cpp scheduler and one executor kind."""

    def __init__(self, workload: str, n: int, seed: int, step_api: bool):
        self.workload, self.n, self.step_api = workload, n, step_api
        self.rng = np.random.default_rng(seed)
        decode = workload == "decode"
        self.prompt, self.output = ((64, 512), (100_000, 100_000)) if decode else ((128, 1024), (32, 512))
        max_seq = self.prompt[1] + (4096 if decode else self.output[1]) + 1
        self.table = ts.RequestTable(n)
        self.kv = ts.KVCacheManager(self.table, TPB, n * -(-max_seq // TPB) + 16, max_seq)
        self.active = ts.RequestList(self.table)
        config = SchedulerConfig("GUARANTEED_NO_EVICT", n, max_num_tokens=max(8192, 2 * n),
                                 chunking=ChunkingConfig("FIRST_COME_FIRST_SERVED", CHUNK))
        self.scheduler = Scheduler(config, self.table, self.kv, backend="cpp")
        self.sim = ts.SimExecutor(self.table, self.kv, None, max_seq)
        self.max_new = 4096 if decode else None
        if step_api:
            self.ex = ts.Executor(self.table, self.kv)
            width = -(-max_seq // TPB)
            budget = max(8192, 2 * n) + n
            self.tables = np.zeros((n, width), np.int32)
            self.slots = np.zeros(budget, np.int64)
            self.ids, self.pos = np.zeros(budget, np.int32), np.zeros(budget, np.int32)
            self.qlen, self.klen = np.zeros(n, np.int32), np.zeros(n, np.int32)
            self.tokens = np.ones(n, np.int32)
        self.next_id = 0
        n_ctx = 0 if decode else n // 4
        for i in range(n):
            self.add(residual=not decode and i >= n_ctx)
        warm = np.array(self.active.slots)[n_ctx:]  # the others start past their context (untimed)
        self.sim.apply(np.zeros(0, np.int32), np.zeros(0, np.int32), np.ascontiguousarray(warm))
        self.decisions: List[int] = []

    def add(self, residual: bool = False):
        n = int(self.rng.integers(self.prompt[0], self.prompt[1] + 1))
        lo, hi = (2, self.output[1]) if residual else self.output
        max_new = self.max_new or int(self.rng.integers(lo, hi + 1))
        prompt = self.rng.integers(0, 32000, n, dtype=np.int32)
        self.active.append(self.table.add_request(self.next_id, prompt, max_new))
        self.next_id += 1

    def step(self):
        """One step; returns (executor ns, of which buffer fills ns)."""
        out = self.scheduler.schedule(self.active)
        if self.step_api:
            ex = self.ex
            t0 = time.perf_counter_ns()
            ex.prepare(out)
            t1 = time.perf_counter_ns()
            ex.block_tables(self.tables)
            ex.slot_mapping(self.slots)
            ex.token_inputs(self.ids, self.pos)
            ex.sequence_lengths(self.qlen, self.klen)
            t2 = time.perf_counter_ns()
            finished = ex.commit(self.tokens[:ex.num_rows])
            t3 = time.perf_counter_ns()
            cost, fills = t3 - t0, t2 - t1
        else:
            execute = np.concatenate((out.context, out.generation))
            t0 = time.perf_counter_ns()
            finished = self.sim.apply(out.paused, out.fitting_disagg_gen_init, execute)
            cost, fills = time.perf_counter_ns() - t0, 0
        self.decisions.append(hash((out.context.tobytes(), out.generation.tobytes(), self.kv.num_free_blocks)))
        if finished.size:
            self.active.remove_slots(finished)
            self.table.remove_slots(finished)
            for _ in range(finished.size):
                self.add()
        return cost, fills


def stats(ns: np.ndarray) -> dict:
    us = ns / 1e3
    return dict(median_us=float(np.median(us)), mean_us=float(us.mean()), p99_us=float(np.percentile(us, 99)))


def measure(workload: str, n: int, steps: int, warmup: int, seed: int, step_api: bool) -> dict:
    engines = [Engine(workload, n, seed, step_api=False)]
    if step_api:
        engines.append(Engine(workload, n, seed, step_api=True))
    gc.collect()
    rec = [[] for _ in engines]
    for i in range(warmup + steps):
        order = engines if i % 2 == 0 else engines[::-1]  # alternate who goes first
        for e in order:
            r = e.step()
            if i >= warmup:
                rec[engines.index(e)].append(r)
    sim = np.array(rec[0], dtype=np.int64)
    row = dict(workload=workload, n_active=n, steps=steps, sim_apply=stats(sim[:, 0]))
    if step_api:
        api = np.array(rec[1], dtype=np.int64)
        row.update(step_api=stats(api[:, 0]), step_api_without_fills=stats(api[:, 0] - api[:, 1]),
                   fills=stats(api[:, 1]), ratio_median=float(np.median(api[:, 0]) / np.median(sim[:, 0])),
                   decisions_match=engines[0].decisions == engines[1].decisions)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--active", default="1024,4096")
    p.add_argument("--workloads", default="decode,mixed")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, metavar="OUT")
    p.add_argument("--apply-only", action="store_true",
                   help="measure SimExecutor.apply alone, one engine at a time (as on a build without the step API)")
    a = p.parse_args(argv)
    step_api = HAS_STEP_API and not a.apply_only
    try:
        actives = [int(x) for x in a.active.split(",")]
    except ValueError:
        p.error("--active: expected comma-separated integers")
    workloads = a.workloads.split(",")
    if any(w not in ("decode", "mixed") for w in workloads):
        p.error("--workloads: decode and/or mixed")
    if min(actives) <= 0 or a.steps <= 0 or a.warmup < 0:
        p.error("--active and --steps must be positive, --warmup >= 0")
    rows = []
    print(f"{'workload':>8} {'N':>6} {'SimExecutor.apply µs':>22} {'step API µs':>18} {'of which fills':>15} "
          f"{'step API / apply':>17}  (median / p99)")
    for w in workloads:
        for n in actives:
            r = measure(w, n, a.steps, a.warmup, a.seed, step_api)
            rows.append(r)
            s = r["sim_apply"]
            line = f"{w:>8} {n:>6} {s['median_us']:>11.1f} / {s['p99_us']:>8.1f}"
            if step_api:
                api, f = r["step_api"], r["fills"]
                line += (f" {api['median_us']:>8.1f} / {api['p99_us']:>7.1f} {f['median_us']:>15.1f} "
                         f"{r['ratio_median']:>16.2f}x" + ("" if r["decisions_match"] else "  DECISIONS DIFFER"))
            print(line, flush=True)
    if a.json:
        payload = dict(format="tllm_sched.executor_cost/1", step_api=step_api, machine=platform.machine(),
                       python=sys.version.split()[0], cpus=os.cpu_count(), results=rows)
        tmp = a.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=2)
        os.replace(tmp, a.json)
    return 0 if all(r.get("decisions_match", True) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
