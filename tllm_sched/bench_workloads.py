"""tllm_sched/bench_workloads.py: what `tllm-sched bench` runs: synthetic workloads and trace replays.

Every run drives the whole serving loop without a GPU: arrivals, scheduling (the only timed
part of the scheduler column), then the C++ `SimExecutor.apply` (KV allocation, chunk advance,
token append, completion and release, pausing) and the release of finished requests, timed as
the executor. Each backend gets an independent `SimState` built from the same seed, so all
backends make identical decisions; the runners step the states in turn ("interleaved") so that
machine drift hits every backend alike, and check that the decisions really were identical.

Synthetic workloads (`WORKLOADS`), N active requests each:
  - decode: every request past its context (prefilled by the executor before measuring) with
    more new tokens than the run has steps: a steady pure-decode batch of N;
  - mixed: a quarter of the requests start in context, the rest decode with a random remaining
    length; each finished request is replaced by a new arrival (prompt 128-1024 tokens) that is
    prefilled in chunks under the token budget, so N stays constant and chunked prefill and
    decode share every step.

Trace replays (`run_trace`): requests arrive when a simulated clock passes their arrival time.
The clock advances per step by a simple step-time model, `step_ms = base_ms + token_ms * T`,
where T is the tokens computed in the step (context tokens actually computed, reused prefix
excluded, plus one per generating request); an empty system jumps to the next arrival.
"""

from __future__ import annotations

import gc
import time
import zlib
from array import array
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from tllm_sched import _core
from tllm_sched.config import ChunkingConfig, KvCacheConfig, SchedulerConfig
from tllm_sched.replay import RunFailure, make_kv_cache_manager
from tllm_sched.scheduler import Scheduler

__all__ = ["WORKLOADS", "POLICIES", "SimState", "SyntheticCase", "TraceOptions", "build_synthetic_state",
           "naive_steps", "probe_backends", "run_synthetic_case", "run_trace", "trace_engine"]

WORKLOADS = ("decode", "mixed")
POLICIES = ("GUARANTEED_NO_EVICT", "MAX_UTILIZATION")
TOKENS_PER_BLOCK = 32  # synthetic workloads
CHUNK_UNIT = 64  # chunked prefill unit (synthetic workloads)
_POOL_TOKENS = 1 << 20  # synthetic prompts are random slices of one shared token pool
_EMPTY = np.zeros(0, dtype=np.int32)
_COUNT_STEPS = 2  # warm-up steps that also count crossings (see SimState)
_COUNT_EVERY = 1000  # trace runs also count on every 1000th step, left out of the time statistics

Progress = Callable[[int], None]


def _noop(_n: int) -> None:
    pass


def _try_scheduler(cfg, table, kv, backend: str, count: bool) -> Optional[Scheduler]:
    """A Scheduler; with count=True one that counts crossings, or None if the facade cannot."""
    if not count:
        return Scheduler(cfg, table, kv, None, None, backend=backend)
    try:
        return Scheduler(cfg, table, kv, None, None, backend=backend, count_crossings=True)
    except TypeError:  # the facade does not take count_crossings (yet)
        return None


def probe_backends(backends: Sequence[str]) -> tuple[List[str], List[str]]:
    """(usable backends, one-line notices for the others). Never raises for a missing backend."""
    usable, notices = [], []
    for b in backends:
        table = _core.RequestTable(1)
        kv = _core.KVCacheManager(table, 8, 4, 64)
        cfg = SchedulerConfig(policy="GUARANTEED_NO_EVICT", max_num_requests=1)
        try:
            Scheduler(cfg, table, kv, None, None, backend=b)
        except (ImportError, NotImplementedError) as e:
            notices.append(f"backend {b} unavailable ({type(e).__name__}: {e}); skipped")
            continue
        usable.append(b)
    return usable, notices


class SimState:
    """One backend's private copy of a simulated engine: table, KV cache, active list, executor.

    `scheduler` is timed. `counter` (None if the facade cannot count) is a second facade over the
    same objects built with count_crossings=True; it schedules the first warm-up steps only, so
    counting never slows a measured step. NOTE(bench): a Scheduler keeps no state between steps,
    so both facades make the same decisions.
    """

    def __init__(self, backend: str, cfg: SchedulerConfig, kv_cfg: KvCacheConfig, capacity: int):
        self.backend = backend
        self.table = _core.RequestTable(capacity)
        self.kv = make_kv_cache_manager(self.table, kv_cfg)
        self.active = _core.RequestList(self.table)
        self.executor = _core.SimExecutor(self.table, self.kv, None, kv_cfg.max_seq_len)
        self.scheduler = _try_scheduler(cfg, self.table, self.kv, backend, count=False)
        self.counter = _try_scheduler(cfg, self.table, self.kv, backend, count=True)
        cols = self.table.columns()  # zero-copy views, built once
        self.pos_col, self.prepop_col = cols["context_current_position"], cols["prepopulated_prompt_len"]
        self.next_id = 0
        self.crossings: List[int] = []
        self.crc: array = array("q")  # per-step checksum of the decisions

    def add(self, prompt: np.ndarray, max_new_tokens: int) -> None:
        self.active.append(self.table.add_request(self.next_id, prompt, max_new_tokens))
        self.next_id += 1

    def prefill(self, slots: np.ndarray) -> None:
        """Runs the whole context of `slots` through the executor (untimed set-up, no scheduler)."""
        if slots.size and self.executor.apply(_EMPTY, _EMPTY, np.ascontiguousarray(slots, dtype=np.int32)).size:
            raise RunFailure("a request finished during prefill; raise max_new_tokens")

    def step(self, count: bool = False, ctx_tokens: bool = False):
        """Schedule (timed) then execute and release (timed): (sched_ns, exec_ns, out, finished, tokens)."""
        sched = self.counter if count and self.counter is not None else self.scheduler
        t0 = time.perf_counter_ns()
        out = sched.schedule(self.active)
        t1 = time.perf_counter_ns()
        ctx = out.context
        execute = np.concatenate((ctx, out.generation))
        if ctx_tokens and ctx.size:
            pos0, pre0 = self.pos_col[ctx], self.prepop_col[ctx]
        t2 = time.perf_counter_ns()
        finished = self.executor.apply(out.paused, out.fitting_disagg_gen_init, execute)
        t3 = time.perf_counter_ns()
        tokens = 0
        if ctx_tokens:  # tokens computed this step: context chunks (reused prefix excluded) + decodes
            tokens = int(out.generation.size)
            if ctx.size:
                tokens += int((self.pos_col[ctx] - pos0).sum() - (self.prepop_col[ctx] - pre0).sum())
        t4 = time.perf_counter_ns()
        if finished.size:
            self.active.remove_slots(finished)
            request_at, remove = self.table.request_at, self.table.remove_request
            for s in finished.tolist():
                remove(request_at(s))
        t5 = time.perf_counter_ns()
        if count and self.counter is not None:
            n = getattr(self.counter, "last_step_crossings", None)
            if n is not None:
                self.crossings.append(int(n))
        self.crc.append(zlib.crc32(out.paused.tobytes(), zlib.crc32(execute.tobytes())))
        return t1 - t0, (t3 - t2) + (t5 - t4), out, finished, tokens

    def crossings_per_step(self) -> Optional[float]:
        if self.crossings:
            return float(np.mean(self.crossings))
        # The cpp backend is one StepScheduler.schedule call by construction (scheduler.py).
        return 1.0 if self.backend == "cpp" else None


def decisions_match(states: Sequence[SimState]) -> Optional[bool]:
    """True if every state made the same decisions as the first over their common steps."""
    if len(states) < 2:
        return None
    ref = states[0].crc
    return all(s.crc[: len(ref)] == ref[: len(s.crc)] for s in states[1:])


# ------------------------------------------------------------------------- synthetic workloads


@dataclass(frozen=True)
class SyntheticCase:
    """One (workload, policy, N) cell of the synthetic grid."""

    workload: str  # "decode" or "mixed"
    policy: str  # capacity scheduler policy name
    n_active: int  # requests in the active list during measurement
    steps: int  # measured steps (python-naive may get fewer: see naive_steps)
    warmup: int  # unmeasured steps first
    seed: int


def naive_steps(steps: int, n_active: int) -> int:
    """Measured steps of python-naive: all up to 512 active, then fewer (>= 50) as N grows."""
    return min(steps, max(50, steps * 512 // max(n_active, 1)))


def _scheduler_config(policy: str, n: int) -> SchedulerConfig:
    return SchedulerConfig(policy=policy, max_num_requests=n, max_batch_size=n, max_num_tokens=max(8192, 2 * n),
                           chunking=ChunkingConfig("FIRST_COME_FIRST_SERVED", CHUNK_UNIT))


class _Source:
    """Seeded request source of one state: (prompt view, max_new_tokens) draws, identical per seed."""

    def __init__(self, pool: np.ndarray, seed: int, prompt: tuple, output: tuple):
        self.rng, self.pool, self.prompt, self.output = np.random.default_rng(seed), pool, prompt, output

    def draw(self, output: Optional[tuple] = None) -> tuple[np.ndarray, int]:
        lo, hi = output or self.output
        n = int(self.rng.integers(self.prompt[0], self.prompt[1] + 1))
        off = int(self.rng.integers(0, self.pool.size - n))
        return self.pool[off:off + n], int(self.rng.integers(lo, hi + 1))


def _build_synthetic(case: SyntheticCase, backend: str, pool: np.ndarray) -> tuple[SimState, Optional[_Source]]:
    n, tpb = case.n_active, TOKENS_PER_BLOCK
    if case.workload == "decode":
        prompt, out_len = (64, 512), case.warmup + case.steps + 16  # never finishes while measured
        output = (out_len, out_len)
    else:
        prompt, output = (128, 1024), (32, 512)
    max_seq = prompt[1] + output[1] + 1
    per_request = -(-max_seq // tpb)  # enough for GUARANTEED_NO_EVICT's remaining-to-completion of all
    kv_cfg = KvCacheConfig(tokens_per_block=tpb, num_blocks=n * per_request + 16, max_seq_len=max_seq)
    st = SimState(backend, _scheduler_config(case.policy, n), kv_cfg, capacity=n)
    src = _Source(pool, case.seed, prompt, output)
    n_ctx = 0 if case.workload == "decode" else n // 4
    for i in range(n):  # residual decode lengths start at 2 so completions are steady from step 1
        p, m = src.draw(None if (case.workload == "decode" or i < n_ctx) else (2, output[1]))
        st.add(p, m)
    st.prefill(np.array(st.active.slots)[n_ctx:])
    return st, (src if case.workload == "mixed" else None)


def _refill(st: SimState, src: Optional[_Source], n_finished: int) -> None:
    for _ in range(n_finished):  # mixed: each finished request is replaced by a new arrival
        st.add(*src.draw())


def _pool(seed: int) -> np.ndarray:
    return np.random.default_rng(seed ^ 0x5EED).integers(0, 32000, _POOL_TOKENS, dtype=np.int32)


def build_synthetic_state(workload: str, policy: str, n_active: int, backend: str, *, seed: int = 0,
                          warmup: int = 5, steps: int = 1000) -> SimState:
    """A state of `workload` with N active after `warmup` executed steps (for bench/ and tests).
    Scheduling it again without executing is idempotent: every call makes the same decisions."""
    st, src = _build_synthetic(SyntheticCase(workload, policy, n_active, steps, warmup, seed), backend, _pool(seed))
    for _ in range(warmup):
        fin = st.step()[3]
        if fin.size and src is not None:
            _refill(st, src, int(fin.size))
    return st


def run_synthetic_case(case: SyntheticCase, backends: Sequence[str], progress: Progress = _noop) -> List[dict]:
    """Measures one case on every backend, interleaved step by step; one result dict per backend."""
    pool = _pool(case.seed)
    built = [_build_synthetic(case, b, pool) for b in backends]
    states = [s for s, _ in built]
    sources = {id(s): src for s, src in built}

    def one(st: SimState, count: bool = False):
        r = st.step(count=count)
        if r[3].size and sources[id(st)] is not None:
            _refill(st, sources[id(st)], int(r[3].size))
        return r

    gc.collect()  # start every case with a clean heap; the collector stays on, as in a server
    for w in range(case.warmup):
        for st in states:
            one(st, count=w < _COUNT_STEPS)
    progress(case.warmup * len(states))
    plan = {}  # measured outer-step indices of each backend (python-naive: fewer, spread evenly)
    for st in states:
        k = naive_steps(case.steps, case.n_active) if st.backend == "python-naive" else case.steps
        plan[id(st)] = set(np.linspace(0, case.steps - 1, k).round().astype(int).tolist()) if k < case.steps else None
    rec = {id(st): (array("q"), array("q"), array("q")) for st in states}  # sched_ns, exec_ns, batch size
    n_fin = {id(st): 0 for st in states}
    for i in range(case.steps):
        shift = i % len(states)  # rotate who goes first
        for st in states[shift:] + states[:shift]:
            p = plan[id(st)]
            if p is not None and i not in p:
                continue
            s_ns, e_ns, out, fin, _ = one(st)
            r = rec[id(st)]
            r[0].append(s_ns)
            r[1].append(e_ns)
            r[2].append(out.context.size + out.generation.size)
            n_fin[id(st)] += int(fin.size)
            progress(1)
    match = decisions_match(states)
    results = []
    for st in states:
        s_ns, e_ns, batch = (np.frombuffer(a, dtype=np.int64) for a in rec[id(st)])
        results.append(dict(
            workload=case.workload, policy=case.policy, backend=st.backend, n_active=case.n_active,
            steps=int(s_ns.size), warmup=case.warmup, **_stats_us(s_ns),
            us_per_request=float(np.median(s_ns)) / 1e3 / case.n_active,
            crossings_per_step=st.crossings_per_step(),
            exec_median_us=float(np.median(e_ns)) / 1e3, exec_p99_us=float(np.percentile(e_ns, 99)) / 1e3,
            mean_batch=float(batch.mean()), finished_per_step=n_fin[id(st)] / max(1, s_ns.size),
            decisions_match=match))
    return results


def _stats_us(ns: np.ndarray) -> dict:
    if ns.size == 0:
        return dict(median_us=None, p99_us=None, mean_us=None, min_us=None, max_us=None)
    q = np.percentile(ns, [50, 99]) / 1e3
    return dict(median_us=float(q[0]), p99_us=float(q[1]), mean_us=float(ns.mean()) / 1e3,
                min_us=float(ns.min()) / 1e3, max_us=float(ns.max()) / 1e3)


# ------------------------------------------------------------------------------ trace replay


@dataclass(frozen=True)
class TraceOptions:
    """A trace replay's engine and step-time model (see the module docstring)."""

    policy: str = "GUARANTEED_NO_EVICT"
    tokens_per_block: int = 64
    num_blocks: int = 16384  # 1,048,576 tokens of KV cache
    max_num_requests: int = 256  # also max_batch_size
    max_num_tokens: int = 8192  # per-step token budget, contexts chunked (unit = one block)
    reuse: Optional[bool] = None  # None: on for Mooncake (it has prompt contents), off for Azure
    step_base_ms: float = 15.0
    step_token_ms: float = 0.02
    max_steps: int = 1_000_000  # a run stops here (reported as truncated); a safety net
    stall_steps: int = 1000  # this many empty steps in a row with work pending: the run fails


class _TraceState:
    """A SimState plus the trace cursor, simulated clock and per-step records."""

    def __init__(self, trace, backend: str, opt: TraceOptions, engine: tuple, prompts: "_PromptCache"):
        self.sim = SimState(backend, *engine, capacity=len(trace))
        self.trace, self.opt, self.prompts = trace, opt, prompts
        self.arrival = trace.arrival_ms
        self.next, self.clock, self.steps, self.stall, self.done_requests = 0, 0.0, 0, 0, 0
        self.rec = {k: array("q") for k in ("sched_ns", "exec_ns", "listed", "in_flight", "batch", "tokens", "used",
                                            "counted")}
        self.clock_ms = array("d")

    @property
    def finished(self) -> bool:
        return self.next >= len(self.trace) and len(self.sim.active) == 0

    def step(self, count: bool) -> None:
        sim, n = self.sim, len(self.trace)
        if len(sim.active) == 0 and self.next < n and self.arrival[self.next] > self.clock:
            self.clock = float(self.arrival[self.next])  # idle: jump to the next arrival
        while self.next < n and self.arrival[self.next] <= self.clock:
            i = self.next
            sim.active.append(sim.table.add_request(i, self.prompts.get(i), int(self.trace.output_length[i])))
            self.next += 1
        listed = len(sim.active)
        s_ns, e_ns, out, fin, tokens = sim.step(count=count, ctx_tokens=True)
        batch = out.context.size + out.generation.size
        self.stall = self.stall + 1 if batch == 0 and out.fitting_disagg_gen_init.size == 0 else 0
        if self.stall >= self.opt.stall_steps:
            raise RunFailure(f"no request could be scheduled for {self.stall} steps with {listed} waiting "
                             f"(KV cache of {self.opt.num_blocks} blocks too small?)")
        self.done_requests += int(fin.size)
        self.clock += self.opt.step_base_ms + self.opt.step_token_ms * tokens
        self.steps += 1
        r = self.rec
        for key, v in (("sched_ns", s_ns), ("exec_ns", e_ns), ("listed", listed), ("in_flight", out.fitting.size),
                       ("batch", batch), ("tokens", tokens), ("used", sim.kv.num_used_blocks), ("counted", count)):
            r[key].append(int(v))
        self.clock_ms.append(self.clock)


class _PromptCache:
    """Prompt token arrays shared by the interleaved states; each is built once and dropped when
    every state has taken it."""

    def __init__(self, trace, users: int):
        from tllm_sched.traces import prompt_tokens

        self._make, self._trace, self._users, self._cache = prompt_tokens, trace, users, {}

    def get(self, i: int) -> np.ndarray:
        hit = self._cache.get(i)
        if hit is None:
            hit = [self._make(self._trace, i), 0]
            self._cache[i] = hit
        hit[1] += 1
        if hit[1] >= self._users:
            del self._cache[i]
        return hit[0]


def trace_engine(trace, opt: TraceOptions) -> tuple:
    """(SchedulerConfig, KvCacheConfig) of a trace replay: max_seq_len the longest request in whole
    blocks, reuse on for Mooncake unless set. RunFailure if a request can never fit the cache."""
    tpb = opt.tokens_per_block
    total = trace.input_length.astype(np.int64) + trace.output_length
    max_seq = int(-(-int(total.max()) // tpb) * tpb)
    too_big = int((-(-total // tpb) > opt.num_blocks).sum())
    if too_big:
        raise RunFailure(f"{too_big} requests need more than the KV cache's {opt.num_blocks} blocks; "
                         f"raise --num-blocks or lower --trace-limit")
    reuse = trace.format == "mooncake" if opt.reuse is None else opt.reuse
    kv_cfg = KvCacheConfig(tokens_per_block=tpb, num_blocks=opt.num_blocks, max_seq_len=max_seq,
                           enable_block_reuse=reuse)
    cfg = SchedulerConfig(policy=opt.policy, max_num_requests=opt.max_num_requests, max_num_tokens=opt.max_num_tokens,
                          chunking=ChunkingConfig("FIRST_COME_FIRST_SERVED", tpb))
    return cfg, kv_cfg


def run_trace(trace, backends: Sequence[str], opt: TraceOptions, progress: Progress = _noop) -> Dict:
    """Replays `trace` on every backend, interleaved; returns {"results": [...], "series": {...}, ...}."""
    engine = trace_engine(trace, opt)
    max_seq = engine[1].max_seq_len
    prompts = _PromptCache(trace, len(backends))
    states = [_TraceState(trace, b, opt, engine, prompts) for b in backends]
    t0 = time.perf_counter()
    while not all(s.finished for s in states) and states[0].steps < opt.max_steps:
        for st in states:
            if not st.finished:
                st.step(count=st.steps < _COUNT_STEPS or st.steps % _COUNT_EVERY == 0)
        progress(1)
    wall = time.perf_counter() - t0
    match = decisions_match([s.sim for s in states])
    results, series = [], {}
    for st in states:
        rec = {k: np.frombuffer(v, dtype=np.int64) for k, v in st.rec.items()}
        stats = st.sim.kv.get_kv_cache_stats()
        timed = rec["counted"] == 0  # steps scheduled by the counting facade are not timed
        sched = rec["sched_ns"][timed]
        in_flight, queued = rec["in_flight"], rec["listed"] - rec["in_flight"]
        kv_util = rec["used"] / opt.num_blocks
        results.append(dict(
            workload=f"trace:{trace.format}", policy=opt.policy, backend=st.sim.backend,
            n_active=int(np.median(in_flight)) if in_flight.size else 0, steps=st.steps, **_stats_us(sched),
            p90_us=_pct(sched, 90), p999_us=_pct(sched, 99.9),
            us_per_request=float(np.median(sched / np.maximum(rec["listed"][timed], 1))) / 1e3 if sched.size else None,
            crossings_per_step=st.sim.crossings_per_step(),
            exec_median_us=_pct(rec["exec_ns"][timed], 50), exec_p99_us=_pct(rec["exec_ns"][timed], 99),
            sched_total_s=float(rec["sched_ns"].sum()) / 1e9, exec_total_s=float(rec["exec_ns"].sum()) / 1e9,
            in_flight_mean=_mean(in_flight), in_flight_max=int(in_flight.max(initial=0)),
            queued_mean=_mean(queued), queued_max=int(queued.max(initial=0)),
            batch_mean=_mean(rec["batch"]), tokens_per_step_mean=_mean(rec["tokens"]),
            kv_util_mean=_mean(kv_util), kv_util_max=float(kv_util.max(initial=0.0)),
            reuse_hit_rate=float(stats["cache_hit_rate"]), reused_blocks=int(stats["reused_blocks"]),
            missed_blocks=int(stats["missed_blocks"]), requests_done=st.done_requests,
            requests_arrived=st.next, simulated_s=st.clock / 1e3, truncated=not st.finished,
            decisions_match=match))
        series[st.sim.backend] = _series(rec, np.frombuffer(st.clock_ms, dtype=np.float64), opt.num_blocks)
    return {"results": results, "series": series, "wall_s": wall, "max_seq_len": max_seq}


def _pct(a: np.ndarray, q: float) -> Optional[float]:
    return float(np.percentile(a, q)) / 1e3 if a.size else None


def _mean(a: np.ndarray) -> float:
    return float(a.mean()) if a.size else 0.0


def _series(rec: Dict[str, np.ndarray], clock_ms: np.ndarray, num_blocks: int, points: int = 200) -> dict:
    """The run in at most `points` windows of consecutive steps (for the plot and results.json)."""
    n = rec["sched_ns"].size
    edges = np.unique(np.linspace(0, n, min(points, n) + 1).round().astype(int)) if n else np.zeros(1, int)
    out = {k: [] for k in ("time_s", "sched_median_us", "sched_p99_us", "in_flight", "queued", "kv_util")}
    for a, b in zip(edges[:-1], edges[1:]):
        s = rec["sched_ns"][a:b][rec["counted"][a:b] == 0]
        s = s if s.size else rec["sched_ns"][a:b]
        out["time_s"].append(round(float(clock_ms[b - 1]) / 1e3, 3))
        out["sched_median_us"].append(round(float(np.median(s)) / 1e3, 3))
        out["sched_p99_us"].append(round(float(np.percentile(s, 99)) / 1e3, 3))
        out["in_flight"].append(round(float(rec["in_flight"][a:b].mean()), 2))
        out["queued"].append(round(float((rec["listed"][a:b] - rec["in_flight"][a:b]).mean()), 2))
        out["kv_util"].append(round(float(rec["used"][a:b].mean()) / num_blocks, 4))
    return out
