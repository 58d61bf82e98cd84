"""bench/soak.py: a long run of the simulated executor on a real trace (leaks, lost requests, drift).

    python bench/soak.py --steps 1000000 --trace ../shared/data/azure_llm_inference_2023_conv.csv

Each step is one scheduling pass (`Scheduler.schedule`, backend "cpp" unless --backend says
otherwise) and one `SimExecutor.apply`; finished requests leave the active list
(`RequestList.remove_slots`) and the table (`RequestTable.remove_request`), and new ones are added
from the trace, cyclically, so that the table stays at --live requests and the run never drains
(the trace gives the prompt and output lengths, in file order; its timestamps are not used).

Every --check-every steps (default 10,000) it checks that
  - `kv.check_invariants()` passes;
  - block accounting is conserved: free + used == total, the primary free queue holds exactly
    num_free_blocks blocks, the blocks held by live sequences and the free blocks add up to the
    pool, and the ref counts add up to the sequences' block lists;
  - no request is lost: the table holds exactly the requests the driver added and did not
    remove, and every one of them is in the active list;
and records the resident set size (from /proc/self/statm). At the end every request is removed
and every block must be free. It exits 1 on any violation, or when RSS after the warm-up grows by
more than --rss-tolerance-mib (default 8 MiB), and prints a summary either way.

The per-step driver is lean on purpose: no Python loop over requests except the finished and
arriving ones. `run()` is the in-process entry point (tests/test_soak_short.py uses it).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TRACE = ROOT.parent / "shared" / "data" / "azure_llm_inference_2023_conv.csv"
_PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = 1 << 20


def rss_bytes() -> int:
    """Resident set size of this process (/proc/self/statm, second field, in pages)."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE


@dataclass
class SoakResult:
    steps: int = 0
    wall_s: float = 0.0
    requests_added: int = 0
    requests_finished: int = 0
    requests_paused: int = 0  # pause decisions applied (a request may be paused many times)
    tokens_appended: int = 0
    checks: int = 0
    rss: List[int] = field(default_factory=list)  # bytes, one per check (the first before step 1)
    rss_steps: List[int] = field(default_factory=list)  # the step of each RSS sample
    warmup_rss: Optional[int] = None  # RSS at the end of the warm-up
    warmup_step: int = 0  # RSS growth is judged from the first check at or after this step
    violations: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def rss_growth(self) -> int:
        """Largest RSS after the warm-up minus RSS at the end of the warm-up (0 if none)."""
        if self.warmup_rss is None:
            return 0
        after = [r for r, s in zip(self.rss, self.rss_steps) if s >= self.warmup_step]
        return max(after) - self.warmup_rss if after else 0

    def summary(self) -> str:
        mib = lambda b: f"{b / MIB:.1f} MiB"  # noqa: E731
        lines = [
            f"soak: {self.steps} steps in {self.wall_s:.1f} s ({1e6 * self.wall_s / max(self.steps, 1):.1f} us/step)",
            f"soak: requests added {self.requests_added}, finished {self.requests_finished}, "
            f"pauses {self.requests_paused}, tokens appended {self.tokens_appended}",
        ]
        if self.rss:
            lines.append(
                f"soak: RSS first {mib(self.rss[0])}, last {mib(self.rss[-1])}, max {mib(max(self.rss))}; "
                f"after warm-up (step {self.warmup_step}): start "
                f"{mib(self.warmup_rss) if self.warmup_rss is not None else 'n/a'}, growth {mib(self.rss_growth)}"
            )
        lines.append(f"soak: {self.checks} checks, {len(self.violations)} violations")
        lines += [f"soak: VIOLATION: {v}" for v in self.violations[:20]]
        return "\n".join(lines)


def run(
    steps: int,
    trace_path: "str | os.PathLike[str]" = DEFAULT_TRACE,
    *,
    backend: str = "cpp",
    policy: str = "MAX_UTILIZATION",
    check_every: int = 10_000,
    warmup_steps: Optional[int] = None,
    rss_tolerance_mib: Optional[float] = 8.0,
    live: int = 96,
    max_num_requests: int = 64,
    max_num_tokens: int = 8192,
    tokens_per_block: int = 32,
    num_blocks: int = 2048,
    max_seq_len: int = 16384,
    enable_block_reuse: bool = True,
    trace_limit: Optional[int] = None,
    progress: bool = False,
) -> SoakResult:
    """Runs the soak in this process; see the module docstring. `rss_tolerance_mib=None` records
    RSS without judging it (sanitizer builds, whose allocator quarantine grows on purpose)."""
    import tllm_sched as ts
    from tllm_sched.config import ChunkingConfig, SchedulerConfig
    from tllm_sched.scheduler import Scheduler
    from tllm_sched.traces import load_trace, prompt_tokens

    if steps < 0 or check_every <= 0:
        raise ValueError("steps must be >= 0 and check_every positive")
    res = SoakResult()
    trace = load_trace(trace_path, limit=trace_limit)
    n_trace = len(trace)
    # Clamp every request so that it fits the cache alone (prompt + output <= max_seq_len).
    in_len = np.minimum(trace.input_length, max_seq_len // 2).astype(np.int64)
    out_len = np.minimum(trace.output_length, max_seq_len - in_len).astype(np.int64)
    in_list, out_list = in_len.tolist(), out_len.tolist()

    table = ts.RequestTable(live)
    kv = ts.KVCacheManager(table, tokens_per_block, num_blocks, max_seq_len, enable_block_reuse=enable_block_reuse)
    unit = tokens_per_block * max(1, 256 // tokens_per_block)
    config = SchedulerConfig(policy, max_num_requests, max_num_tokens=max_num_tokens,
                             chunking=ChunkingConfig("EQUAL_PROGRESS", unit))
    sched = Scheduler(config, table, kv, backend=backend)
    active = ts.RequestList(table)
    ex = ts.SimExecutor(table, kv, None, max_seq_len)
    live_ids = set()
    next_id = 0

    def admit() -> None:
        nonlocal next_id
        while len(live_ids) < live:
            i = next_id % n_trace
            toks = prompt_tokens(trace, i)[: in_list[i]]
            r = table.add_request(next_id, toks, out_list[i])
            active.append(r)
            live_ids.add(next_id)
            next_id += 1
            res.requests_added += 1

    def violate(step: int, what: str) -> None:
        res.violations.append(f"step {step}: {what}")

    def check(step: int) -> None:
        res.checks += 1
        try:
            kv.check_invariants()
        except RuntimeError as e:
            violate(step, f"check_invariants: {e}")
        free, used, total = kv.num_free_blocks, kv.num_used_blocks, kv.max_num_blocks
        if free + used != total:
            violate(step, f"free {free} + used {used} != total {total}")
        q0 = kv.free_queue(0)
        if q0.size != free:
            violate(step, f"free queue holds {q0.size} blocks, num_free_blocks is {free}")
        held, refs_expected = set(), {}
        for rid in live_ids:  # every 10,000 steps only
            if kv.has_sequence(rid):
                ids = kv.get_cache_block_ids(rid).tolist()
                held.update(ids)
                for b in ids:
                    refs_expected[b] = refs_expected.get(b, 0) + 1
        if len(held) + free != num_blocks:
            violate(step, f"held {len(held)} + free {free} != {num_blocks} primary blocks")
        if held & set(q0.tolist()):
            violate(step, "a block is both held and free")
        bad = [b for b, n in refs_expected.items() if kv.ref_count(b) != n]
        if bad:
            violate(step, f"ref counts differ from sequence holdings for blocks {bad[:5]}")
        if len(table) != len(live_ids):
            violate(step, f"table holds {len(table)} requests, driver expects {len(live_ids)}")
        if len(active) != len(live_ids) or set(active.request_ids().tolist()) != live_ids:
            violate(step, f"active list ({len(active)}) differs from the live requests ({len(live_ids)})")
        r = rss_bytes()
        res.rss.append(r)
        res.rss_steps.append(step)
        if res.warmup_rss is None and step >= res.warmup_step:
            res.warmup_rss = r
        if progress:
            print(f"soak: step {step}: live {len(live_ids)}, free blocks {free}, RSS {r / MIB:.1f} MiB",
                  file=sys.stderr, flush=True)

    res.warmup_step = warmup_steps if warmup_steps is not None else min(steps, max(check_every, steps // 10))
    schedule, apply = sched.schedule, ex.apply
    remove_slots, remove_request, request_at = active.remove_slots, table.remove_request, table.request_at
    request_ids = table.request_ids
    concat = np.concatenate
    admit()
    check(0)
    t0 = time.perf_counter()
    step = 0
    try:
        for step in range(1, steps + 1):
            o = schedule(active)
            ctx, gen = o.context, o.generation
            execute = gen if ctx.size == 0 else (ctx if gen.size == 0 else concat((ctx, gen)))
            paused = o.paused
            if paused.size:
                res.requests_paused += paused.size
            finished = apply(paused, o.fitting_disagg_gen_init, execute)
            if finished.size:
                remove_slots(finished)
                for rid, s in zip(request_ids(finished).tolist(), finished.tolist()):
                    remove_request(request_at(s))
                    live_ids.discard(rid)
                res.requests_finished += finished.size
                admit()
            if step % check_every == 0:
                check(step)
                if len(res.violations) > 50:
                    break
    except Exception as e:  # a failed step is a violation, not a crash of the soak
        violate(step, f"{type(e).__name__}: {e}")
    res.steps = step
    res.wall_s = time.perf_counter() - t0
    res.tokens_appended = ex.tokens_appended
    if step % check_every:
        check(step)

    # Drain: every request goes, every block must be free.
    for rid in sorted(live_ids):
        if kv.has_sequence(rid):
            kv.remove_sequence(rid)
        r = table.get(rid)
        active.remove(r)
        remove_request(r)
    live_ids.clear()
    kv.check_invariants()
    if kv.num_free_blocks != num_blocks or len(kv.free_queue(0)) != num_blocks:
        violate(step, f"after removing every request {kv.num_free_blocks} of {num_blocks} blocks are free")
    if any(kv.ref_count(b) for b in range(kv.max_num_blocks)):
        violate(step, "a block keeps a reference after every request was removed")
    if len(table) or len(active):
        violate(step, f"table ({len(table)}) or active list ({len(active)}) not empty after the drain")
    if rss_tolerance_mib is not None and res.rss_growth > rss_tolerance_mib * MIB:
        res.violations.append(
            f"RSS grew by {res.rss_growth / MIB:.1f} MiB after the warm-up (tolerance {rss_tolerance_mib} MiB)")
    return res


def main(argv: Optional[List[str]] = None) -> int:
    from tllm_sched.registry import CAPACITY_POLICIES
    from tllm_sched.scheduler import BACKENDS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=1_000_000)
    p.add_argument("--trace", default=str(DEFAULT_TRACE), help="Azure CSV or Mooncake JSONL trace")
    p.add_argument("--backend", default="cpp", choices=BACKENDS)
    p.add_argument("--policy", default="MAX_UTILIZATION", choices=tuple(CAPACITY_POLICIES))
    p.add_argument("--check-every", type=int, default=10_000)
    p.add_argument("--warmup-steps", type=int, default=None,
                   help="RSS growth is measured from here (default: 10%% of the steps, at least one check)")
    p.add_argument("--rss-tolerance-mib", type=float, default=8.0)
    p.add_argument("--no-rss-check", action="store_true", help="record RSS but do not judge it (sanitizers)")
    p.add_argument("--live", type=int, default=96, help="requests kept in the table")
    p.add_argument("--max-num-requests", type=int, default=64)
    p.add_argument("--num-blocks", type=int, default=2048)
    p.add_argument("--no-reuse", action="store_true")
    p.add_argument("--progress", action="store_true", help="one stderr line per check")
    a = p.parse_args(argv)
    res = run(a.steps, a.trace, backend=a.backend, policy=a.policy, check_every=a.check_every,
              warmup_steps=a.warmup_steps, rss_tolerance_mib=None if a.no_rss_check else a.rss_tolerance_mib,
              live=a.live, max_num_requests=a.max_num_requests, num_blocks=a.num_blocks,
              enable_block_reuse=not a.no_reuse, progress=a.progress)
    print(res.summary())
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())
