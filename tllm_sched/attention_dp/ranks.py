"""tllm_sched/attention_dp/ranks.py: one attention-DP rank: its step protocol and its engine.

TensorRT-LLM's twins: the attention-DP parts of py_executor.py (_fetch_new_requests with the ADP
router, _balance_adp_requests) and the SPMD design of scheduler/unified.py. Each rank schedules
its own requests with its own `Scheduler` (any backend) over its own table and KV cache; then,
per step, exactly one collective:

    1. schedule locally                       (AdpRank.schedule)
    2. pack this rank's state record          (AttentionDP.pack: counts, loads, and the prefix
                                               match lengths of the shared queue head)
    3. all_gather the records                 (a transport group: the step's only collective)
    4. decide, identically on every rank      (AttentionDP.decide: parse, context balancing,
                                               routing of the queue head)
    5. admit the requests routed here and execute this step's batch, contexts held back when the
       context balancer says so            (AdpRank.admit, AdpRank.execute)

TensorRT-LLM gathers up to three times per step (rank states before routing, prefix matches for
the KV-aware router, scheduled counts for context balancing). Scheduling before the gather lets
one record carry all three; the price is that a request routed at step t is first scheduled at
step t + 1 (TensorRT-LLM's legacy path schedules it in the step it was routed).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from tllm_sched import _core
from tllm_sched.attention_dp.adp_router import ADPRouter, NewRequests, Routing
from tllm_sched.attention_dp.rank_state import RankStateError, RankStates, pack_record, parse_records, record_length
from tllm_sched.config import KvCacheConfig, SchedulerConfig
from tllm_sched.replay import make_kv_cache_manager
from tllm_sched.scheduler import Scheduler, SchedulerOutput

__all__ = ["AdpRank", "AttentionDP", "ContextBalance", "ContextBalancer", "StepDecision"]

_EMPTY = np.zeros(0, dtype=np.int32)


@dataclass(frozen=True)
class ContextBalance:
    """TensorRT-LLM's attention-DP balance (attention_dp_config.enable_balance): hold every rank's
    new contexts until all ranks have one (at most `timeout_iters` steps), then let them wait up to
    `batching_wait_iters` more steps to gather more. The defaults are TensorRT-LLM's blog's."""

    timeout_iters: int = 50
    batching_wait_iters: int = 10

    def __post_init__(self):
        if self.timeout_iters < 0 or self.batching_wait_iters < 0:
            raise ValueError("timeout_iters and batching_wait_iters must be >= 0")


class ContextBalancer:
    """TensorRT-LLM's _balance_adp_requests, fed from the gathered records. Its counters evolve
    identically on every rank, so every rank holds or runs its contexts in the same steps."""

    def __init__(self, config: ContextBalance, max_batch_size: int):
        self.config = config
        self.max_batch_size = int(max_batch_size)
        self.waiting_iters = 0
        self.batching_iters = 0

    def run_contexts(self, context: np.ndarray, generation: np.ndarray) -> bool:
        """Whether the ranks run this step's scheduled contexts (False: every rank holds them)."""
        gen = generation.tolist()  # a handful of ranks: plain Python beats numpy reductions
        all_have_free_slots = max(gen) < self.max_batch_size
        all_have_context = min(context.tolist()) > 0
        all_have_generation = min(gen) > 0
        if all_have_free_slots and all_have_context:
            self.waiting_iters = 0
            if all_have_generation:
                if self.batching_iters < self.config.batching_wait_iters:
                    self.batching_iters += 1
                    return False
                self.batching_iters = 0
            return True
        self.waiting_iters += 1
        if self.waiting_iters >= self.config.timeout_iters or not all_have_generation:
            self.waiting_iters = 0
            return True
        return False


@dataclass(frozen=True)
class StepDecision:
    """What every rank decided from one step's gathered records."""

    states: RankStates
    routing: Routing
    run_contexts: bool


class AttentionDP:
    """One rank's side of the step protocol: packs its record, decides from the gathered records.

    `route_window`: at most this many queued requests are routed per step (the head of the shared
    queue); the KV-aware router's records carry one match length per request of it.
    `max_num_active_requests`: the per-rank cap of the routers (TensorRT-LLM's). `balance`: context
    balancing, or None. `decide` keeps the nanoseconds of its last parse, balance and route."""

    def __init__(self, rank: int, world_size: int, router: ADPRouter, *, max_num_active_requests: int,
                 max_batch_size: int, route_window: int = 256, balance: Optional[ContextBalance] = ContextBalance()):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of {world_size}")
        if route_window <= 0 or max_num_active_requests <= 0:
            raise ValueError("route_window and max_num_active_requests must be positive")
        self.rank, self.world_size, self.router = int(rank), int(world_size), router
        self.max_num_active_requests = int(max_num_active_requests)
        self.route_window = int(route_window)
        self.record_length = record_length(self.route_window if router.needs_prefix_matches else 0)
        self.record = np.zeros(self.record_length, dtype=np.int64)
        self.balancer = None if balance is None else ContextBalancer(balance, max_batch_size)
        self.last_ns = (0, 0, 0)  # parse, balance, route

    def pack(self, step: int, state: dict, queue_ids: np.ndarray, matches: Optional[np.ndarray] = None,
             last_tokens: int = 0) -> np.ndarray:
        """This rank's record of `step` (the AdpRank.state() counts, the queue head's ids and, for a
        router that needs them, its match lengths on this rank) in `self.record`."""
        return pack_record(self.record, rank=self.rank, step=step, last_tokens=last_tokens, queue_ids=queue_ids,
                           matches=matches if self.router.needs_prefix_matches else None, **state)

    def decide(self, gathered: np.ndarray, step: int, new: NewRequests) -> StepDecision:
        """Parses the gathered records and decides the step: identical inputs, identical decision."""
        t0 = time.perf_counter_ns()
        states = parse_records(gathered, length=self.record_length, step=step)
        if len(new) != states.queue_len:
            raise RankStateError(f"rank {self.rank} routes a queue head of {len(new)} requests, the records "
                                 f"describe {states.queue_len}")
        t1 = time.perf_counter_ns()
        run = True if self.balancer is None else self.balancer.run_contexts(states.context, states.generation)
        t2 = time.perf_counter_ns()
        routing = self.router.route(states, new, self.max_num_active_requests)
        t3 = time.perf_counter_ns()
        self.last_ns = (t1 - t0, t2 - t1, t3 - t2)
        return StepDecision(states, routing, run)


class AdpRank:
    """One rank's engine in a simulation: its own table, KV cache, active list, Scheduler (any
    backend) and simulated executor (`SimExecutor`)."""

    def __init__(self, rank: int, scheduler_config: SchedulerConfig, kv_config: KvCacheConfig, capacity: int,
                 *, backend: str = "cpp"):
        self.rank = int(rank)
        self.table = _core.RequestTable(capacity)
        self.kv = make_kv_cache_manager(self.table, kv_config)
        self.active = _core.RequestList(self.table)
        self.scheduler = Scheduler(scheduler_config, self.table, self.kv, backend=backend)
        self.executor = _core.SimExecutor(self.table, self.kv, None, kv_config.max_seq_len)
        cols = self.table.columns()  # zero-copy views, built once
        self._prompt, self._cached = cols["orig_prompt_len"], cols["prepopulated_prompt_len"]
        self._chunk, self._position = cols["context_chunk_size"], cols["context_current_position"]
        self.out: SchedulerOutput = SchedulerOutput.make_empty()

    def schedule(self) -> SchedulerOutput:
        self.out = self.scheduler.schedule(self.active)
        return self.out

    def state(self) -> dict:
        """The record counts after this step's schedule (before admissions and execution)."""
        slots, out = self.active.slots, self.out
        prompt, cached = self._prompt[slots], self._cached[slots]
        n_ctx, n_gen = int(out.context.size), int(out.generation.size)
        return dict(active_requests=len(self.active), active_tokens=int(prompt.sum()),
                    uncached_tokens=int(np.maximum(prompt - cached, 0).sum()), free_blocks=self.kv.num_free_blocks,
                    waiting=len(self.active) - n_ctx - n_gen, context=n_ctx, generation=n_gen,
                    scheduled_tokens=int(self._chunk[out.context].sum()) + n_gen)

    def probe(self, tokens: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Prefix match length of each queued prompt on this rank's reuse tree (one call)."""
        return self.kv.probe_prefix_match_lengths(tokens, offsets).astype(np.int64)

    def admit(self, request_ids, prompts, max_new_tokens) -> None:
        """Adds the requests routed to this rank (scheduled from the next step on)."""
        for rid, prompt, m in zip(request_ids, prompts, max_new_tokens):
            self.active.append(self.table.add_request(int(rid), prompt, int(m)))

    def execute(self, run_contexts: bool) -> tuple[int, np.ndarray]:
        """Runs this step's batch (without its contexts when they are held): (tokens computed,
        reused prefix excluded; request ids finished)."""
        out = self.out
        ctx = out.context if run_contexts else _EMPTY
        if ctx.size:
            pos0, cached0 = self._position[ctx], self._cached[ctx]
        finished = self.executor.apply(out.paused, out.fitting_disagg_gen_init, np.concatenate((ctx, out.generation)))
        tokens = int(out.generation.size)
        if ctx.size:
            tokens += int((self._position[ctx] - pos0).sum() - (self._cached[ctx] - cached0).sum())
        ids = self.table.request_ids(finished) if finished.size else np.zeros(0, dtype=np.int64)
        if finished.size:
            self.active.remove_slots(finished)
            for s in finished.tolist():
                self.table.remove_request(self.table.request_at(s))
        self.out = SchedulerOutput.make_empty()
        return tokens, ids
