"""tllm_sched/registry.py: the capacity policies, one entry each; everything else derives from here.

C++ twin: the `CapacitySchedulerPolicy` enum of ext/policies/common.h (the same names, in the same
order; tests/test_registry.py checks it). Scenario validation, the configuration, the command
lines (`tllm-sched bench`, bench/soak.py), the bench report, the CI gates and the tests read the
names and the implementations from `CAPACITY_POLICIES`; nothing else lists them.

The other closed sets have one home each, beside their implementations:
  - chunking policies: `tllm_sched.policies.chunking.POLICIES` (re-exported here);
  - waiting-queue policies: `tllm_sched.waiting_queue.POLICIES`, from the C++ enum (re-exported here);
  - backends: `tllm_sched.scheduler.BACKENDS` and its factory `make_backend`;
  - synthetic bench workloads: `tllm_sched.bench_workloads.WORKLOADS`.

Adding a capacity policy: its C++ file and C++ registry entry, its module in
tllm_sched/policies/, its python-naive twin in tllm_sched/naive/, its fused loop (in the three
fused.* files), one `CapacityPolicy` below, its tests (tests/test_<policy>.py) and its line in
design.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Tuple

from tllm_sched import waiting_queue
from tllm_sched.naive import fused as naive_fused
from tllm_sched.naive import guaranteed_no_evict as naive_guaranteed_no_evict
from tllm_sched.naive import max_requests as naive_max_requests
from tllm_sched.naive import max_utilization as naive_max_utilization
from tllm_sched.policies import chunking, fused, guaranteed_no_evict, max_requests, max_utilization

__all__ = ["CapacityPolicy", "CAPACITY_POLICIES", "NO_KV_CACHE", "BENCH_POLICIES", "CHUNKING_POLICIES",
           "WAITING_QUEUE_POLICIES", "resolve_capacity_policy"]


@dataclass(frozen=True)
class CapacityPolicy:
    """One capacity policy and its implementations on the two Python backends (the cpp backend
    picks its twin through the C++ enum member of the same name)."""

    name: str  # the C++ enum member and the scenario / config spelling
    short: str  # abbreviation in the bench's tables and its --policies option
    python: Callable  # batched backend: schedule(ctx: CapacityContext) -> (scheduled, paused) positions
    naive: Callable  # python-naive backend: schedule(ctx: naive CapacityContext, requests) -> (scheduled, paused)
    fused: Callable  # batched backend, fused mode: schedule(ctx, budget: fused.TokenBudget) -> (scheduled, paused)
    fused_naive: Callable  # python-naive, fused mode: schedule(ctx, requests, tracker) -> (scheduled, paused)
    decode_crossings: int  # Python -> C++ calls of the batched backend in a steady decode step (exact, both modes)
    aliases: Tuple[str, ...] = ()  # more spellings the bench's --policies accepts


CAPACITY_POLICIES: Dict[str, CapacityPolicy] = {p.name: p for p in (
    # slots, start_scheduling, get_needed_blocks_one_step_sum
    CapacityPolicy("MAX_UTILIZATION", "MU", max_utilization.schedule, naive_max_utilization.schedule,
                   fused.schedule_max_utilization, naive_fused.schedule_max_utilization, 3, aliases=("MAX_UTIL",)),
    # slots (only running generations: no cache question)
    CapacityPolicy("GUARANTEED_NO_EVICT", "GNE", guaranteed_no_evict.schedule, naive_guaranteed_no_evict.schedule,
                   fused.schedule_guaranteed_no_evict, naive_fused.schedule_guaranteed_no_evict, 1),
    CapacityPolicy("STATIC_BATCH", "SB", guaranteed_no_evict.schedule_static_batch,
                   naive_guaranteed_no_evict.schedule_static_batch, fused.schedule_static_batch,
                   naive_fused.schedule_static_batch, 1),
)}

# Without a KV cache manager every policy admits by count (TensorRT-LLM's MaxRequestsScheduler).
NO_KV_CACHE = CapacityPolicy("MAX_REQUESTS", "MR", max_requests.schedule, naive_max_requests.schedule,
                             fused.schedule_max_requests, naive_fused.schedule_max_requests, 1)

# What `tllm-sched bench` and the CI gates measure by default, in this order: the serving policies.
BENCH_POLICIES: Tuple[str, ...] = ("GUARANTEED_NO_EVICT", "MAX_UTILIZATION")

CHUNKING_POLICIES: Tuple[str, ...] = tuple(chunking.POLICIES)

WAITING_QUEUE_POLICIES: Tuple[str, ...] = waiting_queue.POLICIES


def resolve_capacity_policy(name: str, has_kv_cache_manager: bool) -> CapacityPolicy:
    """The entry a capacity scheduler runs (TensorRT-LLM's choice at construction): without a KV
    cache manager the max-requests path, whatever `name`. Raises ValueError for an unknown name."""
    if not has_kv_cache_manager:
        return NO_KV_CACHE
    try:
        return CAPACITY_POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown capacity scheduler policy {name!r}") from None

