"""tllm_sched/bench_workloads.py: what `tllm-sched bench` runs: synthetic workloads, trace replays
and the prompt-length sweep.

Every run drives the whole serving loop without a GPU: arrivals, scheduling (the only timed
part of the scheduler column: wall clock and the thread's CPU time), then the C++
`SimExecutor.apply` (KV allocation, chunk advance, token append, completion and release,
pausing) and the release of finished requests, timed as the executor. Each backend gets an
independent `SimState` built from the same seed, so all backends make identical decisions; the
runners step the states in turn ("interleaved", who goes first rotating step by step) so that
machine drift hits every backend alike, and compare a checksum of every step's decisions across
the backends as they go (`DecisionCheck`): a difference ends the run naming the step.

Synthetic workloads (`WORKLOADS`), N active requests each:
  - decode: every request past its context (prefilled by the executor before measuring) with
    more new tokens than the run has steps: a steady pure-decode batch of N;
  - mixed: a quarter of the requests start in context, the rest decode with a random remaining
    length; each finished request is replaced by a new arrival (prompt 128-1024 tokens) that is
    prefilled in chunks under the token budget, so N stays constant and chunked prefill and
    decode share every step;
  - reuse: KV block reuse on; requests come in families sharing a long prefix (1k to 32k tokens,
    `FamilySource`), each finished request is replaced by a new arrival (N concurrent clients).
    A new context is charged its whole prompt by the micro-batch scheduler, so the token budget
    starts about two per step and sustains about 550 running requests: above that the rest of
    the N wait, a queue whose prefixes the capacity scheduler walks in the reuse tree every step.
    The run starts near that steady state (REUSE_RUNNING prefilled, the rest waiting).

Trace replays (`run_trace`): requests arrive when a simulated clock passes their arrival time.
The clock advances per step by a simple step-time model, `step_ms = base_ms + token_ms * T`,
where T is the tokens computed in the step (context tokens actually computed, reused prefix
excluded, plus one per generating request); an empty system jumps to the next arrival.

The prompt-length sweep (`run_sweep_case`): per shared-prefix length, one unchanged state of
running generations and waiting prompts, all of one cached family, scheduled again and again.
"""

from __future__ import annotations

import gc
import time
import zlib
from array import array
from dataclasses import dataclass
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

import numpy as np

from tllm_sched import _core
from tllm_sched.config import ChunkingConfig, KvCacheConfig, SchedulerConfig
from tllm_sched.registry import BENCH_POLICIES, CAPACITY_POLICIES
from tllm_sched.backend import SchedulerOutput
from tllm_sched.replay import RunFailure, make_kv_cache_manager
from tllm_sched.scheduler import Scheduler

__all__ = ["WORKLOADS", "POLICIES", "SWEEP_LENGTHS", "DecisionCheck", "DecisionMismatch", "FamilySource", "SimState",
           "StepResult", "SweepCase", "SyntheticCase", "TraceOptions", "add_growth", "build_synthetic_state",
           "check_sweep_case", "check_synthetic_case", "check_trace_fits", "decision_checksum", "measured_steps",
           "naive_steps", "warmup_steps", "probe_backends", "run_sweep_case", "run_synthetic_case", "run_trace",
           "timing_stats", "trace_engine"]

WORKLOADS = ("decode", "mixed", "reuse")
POLICIES = BENCH_POLICIES
POLICY_SHORT = {p.name: p.short for p in CAPACITY_POLICIES.values()}
TOKENS_PER_BLOCK = 32  # synthetic workloads
CHUNK_UNIT = 64  # chunked prefill unit (synthetic workloads)
_POOL_TOKENS = 1 << 20  # synthetic prompts are random slices of one shared token pool
_EMPTY = np.zeros(0, dtype=np.int32)
_COUNT_STEPS = 2  # warm-up steps that also count crossings (see SimState)
_COUNT_EVERY = 1000  # trace runs also count on every 1000th step, left out of the time statistics

# The reuse workload (FamilySource, _build_synthetic).
REUSE_PREFIX_LENGTHS = (1024, 2048, 4096, 8192, 16384, 32768)  # a family's shared prefix (tokens)
REUSE_SUFFIX = (64, 512)  # each request's own tokens after its family's prefix
REUSE_OUTPUT = (32, 512)  # new tokens per request
REUSE_FAMILY_SIZE = 32  # active requests per live family, on average
REUSE_NEW_FAMILY = 1 / 32  # chance that an arrival first replaces a random live family by a new one
REUSE_RUNNING = 544  # requests that start running (prefilled): about what the token budget sustains (measured)
REUSE_MIN_STEPS = 30  # the fewest measured steps of a reuse case (see measured_steps)
REUSE_MIN_WARMUP = 5  # the fewest warm-up steps of a reuse case (see warmup_steps)

Progress = Callable[[int], None]


def _noop(_n: int) -> None:
    pass


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

    `scheduler` is timed. `counter` is a second facade over the
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
        self.scheduler = Scheduler(cfg, self.table, self.kv, backend=backend)
        self.counter = Scheduler(cfg, self.table, self.kv, backend=backend, count_crossings=True)
        cols = self.table.columns()  # zero-copy views, built once
        self.pos_col, self.prepop_col = cols["context_current_position"], cols["prepopulated_prompt_len"]
        self.chunk_col, self.prompt_col = cols["context_chunk_size"], cols["prompt_len"]
        self.next_id = 0
        self.crossings: List[int] = []
        self.crc: array = array("q")  # per-step checksum of the decisions

    def add(self, prompt: np.ndarray, max_new_tokens: int) -> None:
        self.active.append(self.table.add_request(self.next_id, prompt, max_new_tokens))
        self.next_id += 1

    def prefill(self, slots: np.ndarray) -> None:
        """Runs the whole context of `slots` through the executor (untimed set-up, no scheduler), in
        as many executor steps as the KV cache needs: a step may hold the new sequences whose blocks
        (counted without reuse, as the executor checks) fit the free blocks."""
        slots = np.ascontiguousarray(slots, dtype=np.int32)
        need = np.cumsum(-(-self.prompt_col[slots].astype(np.int64) // self.kv.tokens_per_block))
        done = 0
        while done < slots.size:
            fits = int(np.searchsorted(need, (need[done - 1] if done else 0) + self.kv.num_free_blocks, "right"))
            end = max(fits, done + 1)  # at least one (the executor refuses it if it cannot fit at all)
            if self.executor.apply(_EMPTY, _EMPTY, slots[done:end]).size:
                raise RunFailure("a request finished during prefill; raise max_new_tokens")
            done = end

    def schedule(self, count: bool = False) -> tuple[int, int, SchedulerOutput]:
        """One timed scheduling pass, not executed: (wall-clock ns, thread CPU ns, decisions). Its
        decision checksum is appended to `crc`; with count, its crossings to `crossings`."""
        sched = self.counter if count else self.scheduler
        c0 = time.thread_time_ns()  # outside the wall-clock window: a thread clock read is a syscall
        t0 = time.perf_counter_ns()
        out = sched.schedule(self.active)
        t1 = time.perf_counter_ns()
        c1 = time.thread_time_ns()
        self.crc.append(decision_checksum(out, self.chunk_col))
        if count:
            self.crossings.append(self.counter.last_step_crossings)
        return t1 - t0, c1 - c0, out

    def step(self, count: bool = False, ctx_tokens: bool = False) -> "StepResult":
        """Schedule (timed: wall clock and thread CPU time) then execute and release (timed)."""
        wall_ns, cpu_ns, out = self.schedule(count)
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
        return StepResult(wall_ns, cpu_ns, (t3 - t2) + (t5 - t4), out, finished, tokens)

    def crossings_per_step(self) -> Optional[float]:
        """Mean Python -> C++ calls over the counted steps; None before any was counted."""
        return float(np.mean(self.crossings)) if self.crossings else None


class StepResult(NamedTuple):
    """One SimState step: the scheduler's wall-clock and thread CPU ns, the executor's ns, the
    decisions, the finished slots and the tokens computed (with ctx_tokens)."""

    sched_ns: int
    cpu_ns: int
    exec_ns: int
    out: SchedulerOutput
    finished: np.ndarray
    tokens: int


def decision_checksum(out: SchedulerOutput, chunk_col: np.ndarray) -> int:
    """CRC-32 of one step's decisions: every output slot array (length-prefixed, so that a slot
    moving from one array to the next changes it) and the chunk sizes given to the contexts."""
    crc = 0
    for a in (out.fitting, out.fitting_disagg_gen_init, out.paused, out.context, out.generation):
        a = np.ascontiguousarray(a, dtype=np.int32)
        crc = zlib.crc32(a.tobytes(), zlib.crc32(a.size.to_bytes(4, "little"), crc))
    return zlib.crc32(np.ascontiguousarray(chunk_col[out.context], dtype=np.int32).tobytes(), crc)


class DecisionMismatch(RunFailure):
    """Two backends made different decisions on the same step (exit status 3)."""


class DecisionCheck:
    """Compares each state's per-step checksums with the first state's, step k with step k (each
    state counts its own steps, warm-up included). Call it after every round of steps: the first
    difference raises DecisionMismatch naming the run and the step."""

    def __init__(self, states: Sequence[SimState], label: str):
        self.states, self.label = list(states), label
        self.checked = [0] * len(self.states)

    def __call__(self) -> None:
        ref = self.states[0]
        for i, st in enumerate(self.states[1:], 1):
            k, n = self.checked[i], min(len(ref.crc), len(st.crc))
            if n > k and st.crc[k:n] != ref.crc[k:n]:
                bad = next(j for j in range(k, n) if st.crc[j] != ref.crc[j])
                raise DecisionMismatch(f"{self.label}: {st.backend} decided differently from {ref.backend} at step "
                                       f"{bad + 1} (steps counted from 1, warm-up included)")
            self.checked[i] = max(k, n)

    @property
    def verdict(self) -> Optional[bool]:
        """True once every step was compared (all equal: a difference raises); None with one state."""
        return True if len(self.states) > 1 else None


# ------------------------------------------------------------------------- synthetic workloads


@dataclass(frozen=True)
class SyntheticCase:
    """One (workload, policy, N) cell of the synthetic grid."""

    workload: str  # one of WORKLOADS
    policy: str  # capacity scheduler policy name
    n_active: int  # requests in the active list during measurement
    steps: int  # measured steps (fewer for some: see measured_steps)
    warmup: int  # unmeasured steps first
    seed: int
    fused: bool = False  # SchedulerConfig.fused: the single pass instead of two stages


def naive_steps(steps: int, n_active: int) -> int:
    """Measured steps of python-naive: all up to 512 active, then fewer (>= 50) as N grows."""
    return min(steps, max(50, steps * 512 // max(n_active, 1)))


def measured_steps(case: SyntheticCase, backend: str) -> int:
    """Measured steps of one backend in one case. python-naive gets fewer above 512 active
    (naive_steps); the reuse workload gets fewer above 128 active, on every backend, since its
    steps cost milliseconds each there (walks of long cached prefixes for a queue of hundreds)."""
    steps = case.steps
    if case.workload == "reuse":
        steps = min(steps, max(REUSE_MIN_STEPS, steps * 128 // max(case.n_active, 1)))
    return naive_steps(steps, case.n_active) if backend == "python-naive" else steps


def warmup_steps(case: SyntheticCase) -> int:
    """Warm-up steps of a case: the reuse workload gets fewer above 256 active (it starts near its
    steady state, and its steps are costly there)."""
    if case.workload == "reuse":
        return min(case.warmup, max(REUSE_MIN_WARMUP, case.warmup * 256 // max(case.n_active, 1)))
    return case.warmup


def _scheduler_config(policy: str, n: int, fused: bool = False) -> SchedulerConfig:
    return SchedulerConfig(policy=policy, max_num_requests=n, max_batch_size=n, max_num_tokens=max(8192, 2 * n),
                           chunking=ChunkingConfig("FIRST_COME_FIRST_SERVED", CHUNK_UNIT), fused=fused)


class _Source:
    """Seeded request source of one state: (prompt view, max_new_tokens) draws, identical per seed."""

    def __init__(self, pool: np.ndarray, seed: int, prompt: tuple, output: tuple):
        self.rng, self.pool, self.prompt, self.output = np.random.default_rng(seed), pool, prompt, output

    def draw(self, output: Optional[tuple] = None) -> tuple[np.ndarray, int]:
        lo, hi = output or self.output
        n = int(self.rng.integers(self.prompt[0], self.prompt[1] + 1))
        off = int(self.rng.integers(0, self.pool.size - n))
        return self.pool[off:off + n], int(self.rng.integers(lo, hi + 1))

    @property
    def max_prompt(self) -> int:
        return self.prompt[1]


class FamilySource:
    """Seeded arrivals of the reuse workload. Requests come in families (a long document, a system
    prompt, a conversation's history): a request's prompt is its family's prefix followed by its
    own suffix. `n_families` families are live at a time; each arrival picks one uniformly, or,
    with chance `new_family`, first replaces a random one by a new family (a new prefix, which
    the cache has not seen). Prefix lengths are drawn uniformly from `prefix_lengths` (log-uniform
    from 1k to 32k tokens by default, as in Mooncake's conversation trace, whose median prompt is
    6.9k tokens). Prompts are numpy concatenations of slices of the shared token pool. `drawn`
    records (family id, prefix length) per draw, for tests."""

    def __init__(self, pool: np.ndarray, seed: int, n_families: int, *, prefix_lengths=REUSE_PREFIX_LENGTHS,
                 suffix=REUSE_SUFFIX, output=REUSE_OUTPUT, new_family: float = REUSE_NEW_FAMILY):
        self.rng, self.pool, self.suffix, self.output, self.new_family = (
            np.random.default_rng(seed), pool, suffix, output, new_family)
        self.lengths = np.asarray(prefix_lengths, dtype=np.int64)
        self.family = np.arange(n_families)  # live family ids
        self.prefix_len = self.rng.choice(self.lengths, n_families)
        self.offset = self.rng.integers(0, pool.size - self.lengths.max(), n_families)
        self.next_family = n_families
        self.drawn: List[tuple[int, int]] = []

    def draw(self, output: Optional[tuple] = None) -> tuple[np.ndarray, int]:
        rng, pool = self.rng, self.pool
        f = int(rng.integers(0, self.family.size))
        if rng.random() < self.new_family:
            self.family[f], self.next_family = self.next_family, self.next_family + 1
            self.prefix_len[f] = rng.choice(self.lengths)
            self.offset[f] = rng.integers(0, pool.size - self.lengths.max())
        n, at = int(self.prefix_len[f]), int(self.offset[f])
        k = int(rng.integers(self.suffix[0], self.suffix[1] + 1))
        own = int(rng.integers(0, pool.size - k))
        lo, hi = output or self.output
        self.drawn.append((int(self.family[f]), n))
        return np.concatenate((pool[at:at + n], pool[own:own + k])), int(rng.integers(lo, hi + 1))

    @property
    def max_prompt(self) -> int:
        return int(self.lengths.max()) + self.suffix[1]


def _synthetic_source(case: SyntheticCase, pool: np.ndarray):
    """(the case's request source, output range of the requests that start running (None: the
    source's), requests that start in context)."""
    n = case.n_active
    if case.workload == "decode":
        out_len = case.warmup + case.steps + 16  # never finishes while measured
        return _Source(pool, case.seed, (64, 512), (out_len, out_len)), None, 0
    if case.workload == "mixed":
        return _Source(pool, case.seed, (128, 1024), (32, 512)), (2, 512), n // 4
    return FamilySource(pool, case.seed, max(2, n // REUSE_FAMILY_SIZE)), (2, REUSE_OUTPUT[1]), max(0, n - REUSE_RUNNING)


def check_synthetic_case(case: SyntheticCase) -> None:
    """ValueError (one line) when the case's engine exceeds a size limit of the C++ core (requests,
    tokens per request, KV blocks), before anything is built."""
    what = f"{case.workload} at {case.n_active:,} active with {case.warmup:,} + {case.steps:,} steps"
    if case.n_active > _core.MAX_TABLE_CAPACITY:
        raise ValueError(f"{what}: more than the limit of {_core.MAX_TABLE_CAPACITY:,} requests")
    src = _synthetic_source(case, _pool(case.seed))[0]
    _check_cache(what, *_synthetic_cache(case, src), "fewer --active or --steps")


def _check_cache(what: str, max_seq: int, num_blocks: int, advice: str) -> None:
    if max_seq > _core.MAX_REQUEST_TOKENS:
        raise ValueError(f"{what}: a request would hold {max_seq:,} tokens, more than the limit of "
                         f"{_core.MAX_REQUEST_TOKENS:,} ({advice})")
    if num_blocks > _core.MAX_NUM_BLOCKS:
        raise ValueError(f"{what}: the KV cache would need {num_blocks:,} blocks, more than the limit of "
                         f"{_core.MAX_NUM_BLOCKS:,} ({advice})")


def _synthetic_cache(case: SyntheticCase, src) -> tuple[int, int]:
    """(max_seq_len, num_blocks) of the case's KV cache."""
    n, tpb = case.n_active, TOKENS_PER_BLOCK
    out_max = src.output[1]
    max_seq = src.max_prompt + out_max + 1
    if case.workload == "reuse":  # every request's own blocks, the live prefixes, room for two more
        own = -(-(REUSE_SUFFIX[1] + out_max + 1) // tpb) + 1
        prefixes = int(src.family.size * src.lengths.mean()) // tpb
        return max_seq, n * own + prefixes + 2 * -(-max_seq // tpb)
    return max_seq, n * -(-max_seq // tpb) + 16  # enough for GUARANTEED_NO_EVICT's remaining-to-completion of all


def _build_synthetic(case: SyntheticCase, backend: str, pool: np.ndarray) -> tuple[SimState, Optional[_Source]]:
    n, tpb = case.n_active, TOKENS_PER_BLOCK
    src, output, n_ctx = _synthetic_source(case, pool)
    max_seq, num_blocks = _synthetic_cache(case, src)
    kv_cfg = KvCacheConfig(tokens_per_block=tpb, num_blocks=num_blocks, max_seq_len=max_seq,
                           enable_block_reuse=case.workload == "reuse")
    st = SimState(backend, _scheduler_config(case.policy, n, case.fused), kv_cfg, capacity=n)
    # mixed: the contexts first; reuse: in arrival order, the running requests (the oldest) first.
    running = np.arange(n_ctx, n) if case.workload != "reuse" else np.arange(n - n_ctx)
    is_running = np.zeros(n, dtype=bool)
    is_running[running] = True
    for i in range(n):  # residual decode lengths start at 2 so completions are steady from step 1
        st.add(*src.draw(output if is_running[i] else None))
    st.prefill(np.array(st.active.slots)[running])
    return st, (src if case.workload != "decode" else None)


def _refill(st: SimState, src: Optional[_Source], n_finished: int) -> None:
    for _ in range(n_finished):  # mixed, reuse: each finished request is replaced by a new arrival
        st.add(*src.draw())


def _pool(seed: int) -> np.ndarray:
    return np.random.default_rng(seed ^ 0x5EED).integers(0, 32000, _POOL_TOKENS, dtype=np.int32)


def build_synthetic_state(workload: str, policy: str, n_active: int, backend: str, *, seed: int = 0,
                          warmup: int = 5, steps: int = 1000) -> SimState:
    """A state of `workload` with N active after `warmup` executed steps (for bench/ and tests).
    Scheduling it again without executing is idempotent: every call makes the same decisions."""
    st, src = _build_synthetic(SyntheticCase(workload, policy, n_active, steps, warmup, seed), backend, _pool(seed))
    for _ in range(warmup):
        fin = st.step().finished
        if fin.size and src is not None:
            _refill(st, src, int(fin.size))
    return st


def run_synthetic_case(case: SyntheticCase, backends: Sequence[str], progress: Progress = _noop) -> List[dict]:
    """Measures one case on every backend, interleaved step by step (the order rotates each step);
    one result dict per backend. Raises DecisionMismatch at the first step on which a backend's
    decisions differ from the first backend's."""
    pool = _pool(case.seed)
    built = [_build_synthetic(case, b, pool) for b in backends]
    states = [s for s, _ in built]
    sources = {id(s): src for s, src in built}
    check = DecisionCheck(states, f"{case.workload} {POLICY_SHORT.get(case.policy, case.policy)} N={case.n_active}")
    walks0 = {id(st): st.kv.num_key_walks for st in states}

    def one(st: SimState, count: bool = False) -> StepResult:
        r = st.step(count=count)
        if r.finished.size and sources[id(st)] is not None:
            _refill(st, sources[id(st)], int(r.finished.size))
        return r

    gc.collect()  # start every case with a clean heap; the collector stays on, as in a server
    warmup = warmup_steps(case)
    for w in range(warmup):
        for st in states:
            one(st, count=w < _COUNT_STEPS)
        check()
    progress(warmup * len(states))
    plan = {}  # measured outer-step indices of each backend (fewer steps: spread evenly)
    for st in states:
        k = measured_steps(case, st.backend)
        plan[id(st)] = set(np.linspace(0, case.steps - 1, k).round().astype(int).tolist()) if k < case.steps else None
    rec = {id(st): tuple(array("q") for _ in range(5)) for st in states}  # sched, cpu, exec ns; batch; waiting
    n_fin = {id(st): 0 for st in states}
    walks1 = {}
    for i in range(case.steps):
        shift = i % len(states)  # rotate who goes first
        for st in states[shift:] + states[:shift]:
            p = plan[id(st)]
            if p is not None and i not in p:
                continue
            r = one(st)
            a = rec[id(st)]
            a[0].append(r.sched_ns)
            a[1].append(r.cpu_ns)
            a[2].append(r.exec_ns)
            a[3].append(r.out.context.size + r.out.generation.size)
            a[4].append(len(st.active) - r.out.context.size - r.out.generation.size)
            n_fin[id(st)] += int(r.finished.size)
            progress(1)
        check()
    for st in states:
        walks1[id(st)] = st.kv.num_key_walks
    results = []
    for st in states:
        s_ns, c_ns, e_ns, batch, waiting = (np.frombuffer(a, dtype=np.int64) for a in rec[id(st)])
        stats = st.kv.get_kv_cache_stats()
        results.append(dict(
            workload=case.workload, policy=case.policy, backend=st.backend, n_active=case.n_active,
            steps=int(s_ns.size), warmup=warmup, **timing_stats(s_ns, c_ns),
            us_per_request=float(np.median(s_ns)) / 1e3 / case.n_active,
            crossings_per_step=st.crossings_per_step(),
            exec_median_us=float(np.median(e_ns)) / 1e3, exec_p99_us=float(np.percentile(e_ns, 99)) / 1e3,
            mean_batch=float(batch.mean()), waiting_mean=float(waiting.mean()),
            finished_per_step=n_fin[id(st)] / max(1, s_ns.size),
            key_walks_per_step=(walks1[id(st)] - walks0[id(st)]) / max(1, warmup + s_ns.size),
            reuse_hit_rate=float(stats["cache_hit_rate"]) if st.kv.enable_block_reuse else None,
            decisions_match=check.verdict))
    return results


def timing_stats(wall_ns: np.ndarray, cpu_ns: np.ndarray) -> dict:
    """Scheduler time over the measured steps: wall clock (median, p99, mean, min, max: µs per
    step; total_s) and thread CPU time (cpu_median_us, cpu_mean_us, cpu_p99_us, cpu_total_s).
    Thread CPU time leaves out the time the thread was preempted, which inflates wall-clock tails
    on a shared machine. Percentiles interpolate linearly (numpy's default)."""
    keys = ("median_us", "p99_us", "mean_us", "min_us", "max_us", "total_s",
            "cpu_median_us", "cpu_mean_us", "cpu_p99_us", "cpu_total_s")
    if wall_ns.size == 0:
        return dict.fromkeys(keys)
    w, c = np.percentile(wall_ns, [50, 99]) / 1e3, np.percentile(cpu_ns, [50, 99]) / 1e3
    return dict(median_us=float(w[0]), p99_us=float(w[1]), mean_us=float(wall_ns.mean()) / 1e3,
                min_us=float(wall_ns.min()) / 1e3, max_us=float(wall_ns.max()) / 1e3,
                total_s=float(wall_ns.sum()) / 1e9, cpu_median_us=float(c[0]), cpu_mean_us=float(cpu_ns.mean()) / 1e3,
                cpu_p99_us=float(c[1]), cpu_total_s=float(cpu_ns.sum()) / 1e9)


# --------------------------------------------------------------------- prompt-length sweep

SWEEP_LENGTHS = (1024, 4096, 16384, 65536)  # shared prefix lengths of the sweep (tokens)


@dataclass(frozen=True)
class SweepCase:
    """One prefix length of the prompt-length sweep: `running` generations and `waiting` prompts,
    all of one family (the prefix, then 128 tokens of their own); the prefix is in the cache."""

    prefix_len: int
    policy: str
    steps: int  # measured scheduling passes
    warmup: int  # unmeasured passes after the first
    seed: int
    running: int = 64
    waiting: int = 64
    suffix: int = 128
    output: int = 64


def _sweep_cache(case: SweepCase) -> tuple[int, int]:
    """(max_seq_len, num_blocks) of a sweep case's KV cache: room for every request's remaining
    blocks to completion, so that GUARANTEED_NO_EVICT admits (and key-walks) every waiting prompt."""
    max_seq = case.prefix_len + case.suffix + case.output + 1
    return max_seq, (case.running + case.waiting) * -(-max_seq // TOKENS_PER_BLOCK) + 16


def check_sweep_case(case: SweepCase) -> None:
    """ValueError (one line) when the sweep case's KV cache exceeds the C++ core's limits."""
    max_seq, num_blocks = _sweep_cache(case)
    what = f"prompt-length sweep at {case.prefix_len:,} tokens"
    _check_cache(what, max_seq, num_blocks, "a shorter prefix")


def _build_sweep(case: SweepCase, backend: str, pool: np.ndarray) -> SimState:
    n, tpb = case.running + case.waiting, TOKENS_PER_BLOCK
    max_seq, num_blocks = _sweep_cache(case)
    kv_cfg = KvCacheConfig(tokens_per_block=tpb, num_blocks=num_blocks, max_seq_len=max_seq,
                           enable_block_reuse=True)
    st = SimState(backend, _scheduler_config(case.policy, n), kv_cfg, capacity=n)
    rng = np.random.default_rng(case.seed)
    at = int(rng.integers(0, pool.size - case.prefix_len))
    own = rng.integers(0, pool.size - case.suffix, n)
    for i in range(n):
        st.add(np.concatenate((pool[at:at + case.prefix_len], pool[own[i]:own[i] + case.suffix])), case.output)
    st.prefill(np.array(st.active.slots)[:case.running])  # the first stores the prefix; the rest reuse it
    return st


def run_sweep_case(case: SweepCase, backends: Sequence[str], progress: Progress = _noop) -> List[dict]:
    """Schedules one unchanged state again and again on every backend, interleaved (rotating):
    the first pass (which meets every waiting prompt for the first time) is reported apart
    (first_us), then `warmup` passes (the first of them counting crossings), then `steps`
    measured ones. Nothing is executed, so every
    pass makes the same decisions and, once a request's hashes exist, need not repeat any work
    that depends on the prompt's length. One result dict per backend."""
    pool = _pool(case.seed)
    states = [_build_sweep(case, b, pool) for b in backends]
    check = DecisionCheck(states, f"prompt-length sweep {POLICY_SHORT.get(case.policy, case.policy)} "
                                  f"prefix={case.prefix_len}")
    gc.collect()
    first = {}
    for st in states:
        first[id(st)] = st.schedule()[:2]
    check()
    walks0 = {id(st): st.kv.num_key_walks for st in states}
    rec = {id(st): (array("q"), array("q")) for st in states}
    for i in range(case.warmup + case.steps):
        shift = i % len(states)
        for st in states[shift:] + states[:shift]:
            wall, cpu, _ = st.schedule(count=i == 0 < case.warmup)
            if i >= case.warmup:
                rec[id(st)][0].append(wall)
                rec[id(st)][1].append(cpu)
        check()
        progress(len(states))
    results = []
    for st in states:
        wall, cpu = (np.frombuffer(a, dtype=np.int64) for a in rec[id(st)])
        passes = case.warmup + case.steps
        results.append(dict(
            workload=f"prefix:{case.prefix_len}", prefix_len=case.prefix_len, policy=case.policy, backend=st.backend,
            n_active=case.running + case.waiting, running=case.running, waiting=case.waiting, steps=int(wall.size),
            warmup=case.warmup, first_us=first[id(st)][0] / 1e3, first_cpu_us=first[id(st)][1] / 1e3,
            **timing_stats(wall, cpu), us_per_request=float(np.median(wall)) / 1e3 / (case.running + case.waiting),
            cpu_us_per_waiting=float(np.median(cpu)) / 1e3 / case.waiting,
            key_walks_per_step=(st.kv.num_key_walks - walks0[id(st)]) / passes,
            crossings_per_step=st.crossings_per_step(), decisions_match=check.verdict))
    return results


def add_growth(results: List[dict]) -> None:
    """Sets growth (thread CPU median over the same backend's and policy's at the shortest prefix)."""
    base: Dict[tuple, tuple] = {}
    for r in results:
        k = (r["policy"], r["backend"])
        if k not in base or r["prefix_len"] < base[k][0]:
            base[k] = (r["prefix_len"], r["cpu_median_us"])
    for r in results:
        b = base[(r["policy"], r["backend"])][1]
        r["growth"] = r["cpu_median_us"] / b if b else None


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
    fused: bool = False  # SchedulerConfig.fused


class _TraceState:
    """A SimState plus the trace cursor, simulated clock and per-step records."""

    def __init__(self, trace, backend: str, opt: TraceOptions, engine: tuple, prompts: "_PromptCache"):
        self.sim = SimState(backend, *engine, capacity=len(trace))
        self.trace, self.opt, self.prompts = trace, opt, prompts
        self.arrival = trace.arrival_ms
        self.next, self.clock, self.steps, self.stall, self.done_requests = 0, 0.0, 0, 0, 0
        self.rec = {k: array("q") for k in ("sched_ns", "cpu_ns", "exec_ns", "listed", "in_flight", "batch", "tokens",
                                            "used", "counted")}
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
        res = sim.step(count=count, ctx_tokens=True)
        out, fin, tokens = res.out, res.finished, res.tokens
        batch = out.context.size + out.generation.size
        self.stall = self.stall + 1 if batch == 0 and out.fitting_disagg_gen_init.size == 0 else 0
        if self.stall >= self.opt.stall_steps:
            raise RunFailure(f"no request could be scheduled for {self.stall} steps with {listed} waiting "
                             f"(KV cache of {self.opt.num_blocks} blocks too small?)")
        self.done_requests += int(fin.size)
        self.clock += self.opt.step_base_ms + self.opt.step_token_ms * tokens
        self.steps += 1
        r = self.rec
        for key, v in (("sched_ns", res.sched_ns), ("cpu_ns", res.cpu_ns), ("exec_ns", res.exec_ns), ("listed", listed),
                       ("in_flight", out.fitting.size), ("batch", batch), ("tokens", tokens),
                       ("used", sim.kv.num_used_blocks), ("counted", count)):
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


def check_trace_fits(trace, tokens_per_block: int, num_blocks: int) -> None:
    """ValueError (one line) naming the first request of `trace` that needs more KV blocks than
    the cache has: it could never run."""
    total = trace.input_length.astype(np.int64) + trace.output_length
    need = -(-total // tokens_per_block)
    too_big = np.flatnonzero(need > num_blocks)
    if too_big.size:
        i = int(too_big[0])
        raise ValueError(f"{trace.path}: request {i} (0-based) needs {int(need[i]):,} blocks of {tokens_per_block} "
                         f"tokens, more than the KV cache's {num_blocks:,} ({too_big.size} such requests; raise "
                         f"--num-blocks or lower --trace-limit)")


def trace_engine(trace, opt: TraceOptions) -> tuple:
    """(SchedulerConfig, KvCacheConfig) of a trace replay: max_seq_len the longest request in whole
    blocks, reuse on for Mooncake unless set. ValueError if a request can never fit the cache."""
    tpb = opt.tokens_per_block
    check_trace_fits(trace, tpb, opt.num_blocks)
    total = trace.input_length.astype(np.int64) + trace.output_length
    max_seq = int(-(-int(total.max()) // tpb) * tpb)
    reuse = trace.format == "mooncake" if opt.reuse is None else opt.reuse
    kv_cfg = KvCacheConfig(tokens_per_block=tpb, num_blocks=opt.num_blocks, max_seq_len=max_seq,
                           enable_block_reuse=reuse)
    cfg = SchedulerConfig(policy=opt.policy, max_num_requests=opt.max_num_requests, max_num_tokens=opt.max_num_tokens,
                          chunking=ChunkingConfig("FIRST_COME_FIRST_SERVED", tpb), fused=opt.fused)
    return cfg, kv_cfg


def run_trace(trace, backends: Sequence[str], opt: TraceOptions, progress: Progress = _noop) -> Dict:
    """Replays `trace` on every backend, interleaved; returns {"results": [...], "series": {...}, ...}."""
    engine = trace_engine(trace, opt)
    max_seq = engine[1].max_seq_len
    prompts = _PromptCache(trace, len(backends))
    states = [_TraceState(trace, b, opt, engine, prompts) for b in backends]
    check = DecisionCheck([s.sim for s in states], f"trace:{trace.format} {POLICY_SHORT.get(opt.policy, opt.policy)}")
    t0 = time.perf_counter()
    i = 0
    while not all(s.finished for s in states) and states[0].steps < opt.max_steps:
        shift = i % len(states)  # rotate who goes first, as the synthetic grid does
        for st in states[shift:] + states[:shift]:
            if not st.finished:
                st.step(count=st.steps < _COUNT_STEPS or st.steps % _COUNT_EVERY == 0)
        check()
        progress(1)
        i += 1
    wall = time.perf_counter() - t0
    results, series = [], {}
    for st in states:
        rec = {k: np.frombuffer(v, dtype=np.int64) for k, v in st.rec.items()}
        stats = st.sim.kv.get_kv_cache_stats()
        timed = rec["counted"] == 0  # steps scheduled by the counting facade are not timed
        sched, cpu = rec["sched_ns"][timed], rec["cpu_ns"][timed]
        in_flight, queued = rec["in_flight"], rec["listed"] - rec["in_flight"]
        kv_util = rec["used"] / opt.num_blocks
        results.append(dict(
            workload=f"trace:{trace.format}", policy=opt.policy, backend=st.sim.backend,
            n_active=int(np.median(in_flight)) if in_flight.size else 0, steps=st.steps, **timing_stats(sched, cpu),
            p90_us=_pct(sched, 90), p999_us=_pct(sched, 99.9),
            us_per_request=float(np.median(sched / np.maximum(rec["listed"][timed], 1))) / 1e3 if sched.size else None,
            crossings_per_step=st.sim.crossings_per_step(),
            exec_median_us=_pct(rec["exec_ns"][timed], 50), exec_p99_us=_pct(rec["exec_ns"][timed], 99),
            exec_total_s=float(rec["exec_ns"].sum()) / 1e9,
            key_walks_per_step=st.sim.kv.num_key_walks / max(1, st.steps),
            in_flight_mean=_mean(in_flight), in_flight_max=int(in_flight.max(initial=0)),
            queued_mean=_mean(queued), queued_max=int(queued.max(initial=0)),
            batch_mean=_mean(rec["batch"]), tokens_per_step_mean=_mean(rec["tokens"]),
            kv_util_mean=_mean(kv_util), kv_util_max=float(kv_util.max(initial=0.0)),
            reuse_hit_rate=float(stats["cache_hit_rate"]), reused_blocks=int(stats["reused_blocks"]),
            missed_blocks=int(stats["missed_blocks"]), requests_done=st.done_requests,
            requests_arrived=st.next, simulated_s=st.clock / 1e3, truncated=not st.finished,
            decisions_match=check.verdict))
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
    out = {k: [] for k in ("time_s", "sched_median_us", "sched_p99_us", "cpu_median_us", "cpu_p99_us", "in_flight",
                           "queued", "kv_util")}
    for a, b in zip(edges[:-1], edges[1:]):
        timed = rec["counted"][a:b] == 0
        if not timed.any():
            timed[:] = True
        out["time_s"].append(round(float(clock_ms[b - 1]) / 1e3, 3))
        for key, col in (("sched", "sched_ns"), ("cpu", "cpu_ns")):
            q = np.percentile(rec[col][a:b][timed], [50, 99]) / 1e3
            out[f"{key}_median_us"].append(round(float(q[0]), 3))
            out[f"{key}_p99_us"].append(round(float(q[1]), 3))
        out["in_flight"].append(round(float(rec["in_flight"][a:b].mean()), 2))
        out["queued"].append(round(float((rec["listed"][a:b] - rec["in_flight"][a:b]).mean()), 2))
        out["kv_util"].append(round(float(rec["used"][a:b].mean()) / num_blocks, 4))
    return out
