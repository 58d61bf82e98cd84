"""tllm_sched/attention_dp/simulation.py: attention-DP replay of a request trace, rank by rank.

`SimRank` is one rank of the replay and runs the same code wherever its records are gathered:
`simulate` runs N of them in one process over an `InProcessGroup` (benchmarks, tests);
`run_rank` runs one of them in its own process over a `TorchGroup` (multi-process tests and
real jobs). Every rank holds the same `WaitingQueue` (requests arrived and not routed) and the
same simulated clock, both advanced only from data all ranks share: the trace and the gathered
records. The clock follows the single-rank benchmark's step-time model with the slowest rank
deciding (attention DP synchronises the ranks every step): a step lasts
`step_base_ms + step_token_ms * max over ranks of the tokens computed`. Each record carries the
tokens its rank computed in the previous step, so the clock runs one step behind the execution and
a request is routed in the step after the one it arrives in.
"""

from __future__ import annotations

import hashlib
import time
from array import array
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import numpy as np

from tllm_sched.attention_dp.adp_router import ROUTERS, NewRequests, make_router
from tllm_sched.attention_dp.rank_state import RankFailure, failed_record, record_length
from tllm_sched.attention_dp.ranks import AdpRank, AttentionDP, ContextBalance, StepDecision
from tllm_sched.attention_dp.transport import InProcessGroup
from tllm_sched.bench_workloads import TraceOptions, _PromptCache, trace_engine
from tllm_sched.replay import RunFailure

__all__ = ["AdpOptions", "SimRank", "WaitingQueue", "run_rank", "simulate"]

FINGERPRINT_TOKENS = 64  # TensorRT-LLM's KV-aware router groups requests by their first 64 tokens
_TIMERS = ("sched_ns", "record_ns", "parse_ns", "balance_ns", "route_ns", "exec_ns")


@dataclass(frozen=True)
class AdpOptions:
    """The attention-DP side of a replay (the engine of each rank is a bench TraceOptions)."""

    dp_ranks: int = 4
    router: str = "load"
    router_backend: str = "cpp"  # the routers' greedy loops: "cpp" or "python"
    balance: Optional[ContextBalance] = ContextBalance()  # None: no context balancing
    route_window: int = 256  # queued requests routed per step at most
    max_num_active_requests: Optional[int] = None  # per-rank router cap; None: the engine's max_num_requests
    scheduler_backend: str = "cpp"

    def __post_init__(self):
        if self.dp_ranks <= 0:
            raise ValueError(f"dp_ranks must be positive, got {self.dp_ranks}")
        if self.router not in ROUTERS:
            raise ValueError(f"unknown router {self.router!r} (choose from {', '.join(ROUTERS)})")

    @property
    def record_length(self) -> int:
        """Values in each rank's state record (what a TorchGroup must gather)."""
        return record_length(self.route_window if ROUTERS[self.router].needs_prefix_matches else 0)


def fingerprint(prompt: np.ndarray) -> int:
    """A 63-bit hash of the first FINGERPRINT_TOKENS tokens (the same in every process)."""
    head = np.ascontiguousarray(prompt[:FINGERPRINT_TOKENS], dtype=np.int32).tobytes()
    return int.from_bytes(hashlib.blake2b(head, digest_size=8).digest(), "little") >> 1


class WaitingQueue:
    """Requests of the trace that arrived and are not routed yet, in arrival order. Every rank holds
    an identical copy and changes it identically (arrivals by the shared clock, removals by the
    shared routing)."""

    def __init__(self, trace, prompts: _PromptCache):
        self.trace, self._prompts = trace, prompts
        self.next = 0  # next trace request to arrive
        self.ids: List[int] = []
        self.prompts: List[np.ndarray] = []
        self.fingerprints: List[int] = []
        self._head: Optional[tuple] = None  # (window, NewRequests, tokens, offsets), until the queue changes

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def exhausted(self) -> bool:
        return self.next >= len(self.trace)

    def next_arrival_ms(self) -> float:
        return float(self.trace.arrival_ms[self.next])

    def arrive(self, clock_ms: float) -> None:
        arrival, n = self.trace.arrival_ms, len(self.trace)
        while self.next < n and arrival[self.next] <= clock_ms:
            prompt = self._prompts.get(self.next)
            self.ids.append(self.next)
            self.prompts.append(prompt)
            self.fingerprints.append(fingerprint(prompt))
            self.next += 1
            self._head = None

    def head(self, window: int) -> NewRequests:
        return self._cached_head(window)[1]

    def head_tokens(self, window: int) -> tuple:
        """(tokens, offsets) of the head's prompts, concatenated, for one probe call."""
        _, _, tokens, offsets = self._cached_head(window, with_tokens=True)
        return tokens, offsets

    def _cached_head(self, window: int, with_tokens: bool = False) -> tuple:
        if self._head is None or self._head[0] != window or (with_tokens and self._head[2] is None):
            k = min(window, len(self.ids))
            ids = np.array(self.ids[:k], dtype=np.int64)
            new = NewRequests(ids, self.trace.input_length[ids].astype(np.int64),
                              fingerprint=np.array(self.fingerprints[:k], dtype=np.int64))
            tokens = offsets = None
            if with_tokens:
                parts = self.prompts[:k]
                offsets = np.zeros(k + 1, dtype=np.int64)
                np.cumsum([p.size for p in parts], out=offsets[1:])
                tokens = np.concatenate(parts) if k else np.zeros(0, dtype=np.int32)
            self._head = (window, new, tokens, offsets)
        return self._head

    def take(self, ranks: np.ndarray, rank: int) -> tuple:
        """Removes every routed request of the head (ranks[i] >= 0); returns (ids, prompts,
        max_new_tokens) of those routed to `rank`."""
        routed = np.flatnonzero(ranks >= 0).tolist()
        if not routed:
            return [], [], []
        mine = [i for i in routed if ranks[i] == rank]
        out = ([self.ids[i] for i in mine], [self.prompts[i] for i in mine],
               [int(self.trace.output_length[self.ids[i]]) for i in mine])
        gone = set(routed)
        keep = [i for i in range(len(self.ids)) if i not in gone]
        self.ids = [self.ids[i] for i in keep]
        self.prompts = [self.prompts[i] for i in keep]
        self.fingerprints = [self.fingerprints[i] for i in keep]
        self._head = None
        return out


@dataclass
class RankLog:
    """What one rank decided and measured, step by step."""

    routed: List[np.ndarray] = field(default_factory=list)  # per step: (request id, rank) rows routed
    run_contexts: array = field(default_factory=lambda: array("b"))
    tokens: array = field(default_factory=lambda: array("q"))  # tokens this rank computed per step
    finished: array = field(default_factory=lambda: array("q"))  # requests this rank finished per step
    latency_ms: array = field(default_factory=lambda: array("d"))  # arrival to finish of each, simulated
    timers: dict = field(default_factory=lambda: {k: array("q") for k in _TIMERS})

    def routing_table(self) -> np.ndarray:
        """(steps routed, 3) int64 rows (step, request id, rank) of the whole run."""
        rows = [np.column_stack((np.full(r.shape[0], s), r)) for s, r in enumerate(self.routed) if r.size]
        return np.concatenate(rows) if rows else np.zeros((0, 3), dtype=np.int64)


class SimRank:
    """One rank of the replay: engine, protocol, queue and clock. Per step: `before_gather()`
    returns the record to gather, `after_gather(gathered)` decides and executes."""

    def __init__(self, rank: int, trace, opts: AdpOptions, engine: TraceOptions, prompts: _PromptCache):
        cfg, kv = trace_engine(trace, engine)  # every rank: the single-rank trace benchmark's engine
        max_active = opts.max_num_active_requests or engine.max_num_requests
        self.rank, self.opts, self.engine_opts = rank, opts, engine
        self.engine = AdpRank(rank, cfg, kv, capacity=max_active, backend=opts.scheduler_backend)
        self.dp = AttentionDP(rank, opts.dp_ranks, make_router(opts.router, opts.router_backend),
                              max_num_active_requests=max_active, max_batch_size=cfg.max_batch_size,
                              route_window=opts.route_window, balance=opts.balance)
        self.queue = WaitingQueue(trace, prompts)
        self.step, self.clock, self.last_tokens, self.stall, self.done = 0, 0.0, 0, 0, False
        self.joined = False  # whether this rank took part in the collective of `self.step`
        self.log = RankLog()
        self.queue.arrive(self.clock)

    def before_gather(self) -> np.ndarray:
        timers = self.log.timers
        t0 = time.perf_counter_ns()
        self.engine.schedule()
        t1 = time.perf_counter_ns()
        window = self.dp.route_window
        self._head = self.queue.head(window)
        matches = self.engine.probe(*self.queue.head_tokens(window)) if self.dp.router.needs_prefix_matches else None
        record = self.dp.pack(self.step, self.engine.state(), self._head.request_id, matches, self.last_tokens)
        timers["sched_ns"].append(t1 - t0)
        timers["record_ns"].append(time.perf_counter_ns() - t1)
        return record

    def after_gather(self, gathered: np.ndarray) -> StepDecision:
        self.joined = True
        d = self.dp.decide(gathered, self.step, self._head)
        ranks = d.routing.ranks
        ids, prompts, max_new = self.queue.take(ranks, self.rank)
        self.engine.admit(ids, prompts, max_new)
        t0 = time.perf_counter_ns()
        self.last_tokens, done = self.engine.execute(d.run_contexts)
        t1 = time.perf_counter_ns()
        log = self.log
        for key, ns in zip(("parse_ns", "balance_ns", "route_ns"), self.dp.last_ns):
            log.timers[key].append(ns)
        log.timers["exec_ns"].append(t1 - t0)
        hit = np.flatnonzero(ranks >= 0)
        log.routed.append(np.column_stack((self._head.request_id[hit], ranks[hit])))
        log.run_contexts.append(d.run_contexts)
        log.tokens.append(self.last_tokens)
        log.finished.append(done.size)
        self._advance(d, routed=hit.size)
        if done.size:  # finished at the end of this step: the clock now (one step behind, like all of it)
            log.latency_ms.extend((self.clock - self.queue.trace.arrival_ms[done]).tolist())
        return d

    def _advance(self, d: StepDecision, routed: int) -> None:
        """The shared clock and end of run, from the gathered records and the shared queue."""
        states, e = d.states, self.engine_opts
        self.clock += e.step_base_ms + e.step_token_ms * float(states.last_tokens.max())
        idle = int(states.active_requests.sum()) == 0 and routed == 0 and len(self.queue) == 0
        if idle and not self.queue.exhausted:
            self.clock = max(self.clock, self.queue.next_arrival_ms())
        self.done = idle and self.queue.exhausted
        scheduled = int(states.context.sum() + states.generation.sum())
        self.stall = self.stall + 1 if scheduled == 0 and int(states.active_requests.sum()) > 0 else 0
        if self.stall >= e.stall_steps:
            raise RunFailure(f"no request could be scheduled on any rank for {self.stall} steps (KV cache of "
                             f"{e.num_blocks} blocks per rank too small?)")
        self.queue.arrive(self.clock)
        self.step += 1
        self.joined = False


@dataclass
class SimResult:
    ranks: List[SimRank]
    steps: int
    collectives: int
    wall_s: float

    @property
    def truncated(self) -> bool:
        return not self.ranks[0].done


def simulate(trace, opts: AdpOptions, engine: TraceOptions, *, max_steps: Optional[int] = None,
             progress: Callable[[int], None] = lambda n: None) -> SimResult:
    """Replays `trace` on `opts.dp_ranks` ranks in this process, one all_gather per step. Checks
    every step that all ranks routed alike (they must: same inputs, same code)."""
    group = InProcessGroup(opts.dp_ranks)
    prompts = _PromptCache(trace, opts.dp_ranks)  # each prompt built once, for all ranks
    ranks = [SimRank(r, trace, opts, engine, prompts) for r in range(opts.dp_ranks)]
    limit = engine.max_steps if max_steps is None else max_steps
    t0 = time.perf_counter()
    steps = 0
    while not ranks[0].done and steps < limit:
        gathered = group.all_gather([r.before_gather() for r in ranks])
        decisions = [r.after_gather(gathered) for r in ranks]
        first = decisions[0]
        for r, d in enumerate(decisions[1:], 1):
            if d.run_contexts != first.run_contexts or not np.array_equal(d.routing.ranks, first.routing.ranks):
                raise RunFailure(f"step {steps}: rank {r} decided differently from rank 0")
        steps += 1
        progress(1)
    return SimResult(ranks, steps, group.collectives, time.perf_counter() - t0)


def run_rank(group, trace, opts: AdpOptions, engine: TraceOptions, *, max_steps: Optional[int] = None,
             fail: Optional[Callable[[int], None]] = None) -> SimRank:
    """Replays `trace` as rank `group.rank` of a torch.distributed job (a TorchGroup), one
    all_gather per step. `fail(step)` is called before each step (tests inject faults with it).
    If this rank raises, it sends a failure record in place of its next state record, so that every
    other rank stops with RankFailure at once, then re-raises."""
    sim = SimRank(group.rank, trace, opts, engine, _PromptCache(trace, 1))
    if group.world_size != opts.dp_ranks:
        raise ValueError(f"the group has {group.world_size} ranks, the options say {opts.dp_ranks}")
    limit = engine.max_steps if max_steps is None else max_steps
    try:
        while not sim.done and sim.step < limit:
            if fail is not None:
                fail(sim.step)
            sim.after_gather(group.all_gather(sim.before_gather()))
    except RankFailure:
        raise
    except BaseException:
        try:  # tell the others at the collective they wait in (best effort: they may be gone)
            group.all_gather(failed_record(sim.dp.record_length, sim.rank, sim.step + sim.joined))
        except Exception:  # noqa: BLE001
            pass
        raise
    return sim
