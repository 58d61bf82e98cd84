"""tllm_sched/naive/max_requests.py: the capacity path without a KV cache: admit by count.

Twins: ext/policies/max_requests.cpp, tllm_sched/policies/max_requests.py. Mirrors
MaxRequestsScheduler.
"""

from __future__ import annotations

from tllm_sched.naive.common import CapacityContext


def schedule(ctx: CapacityContext, reqs: list, tracker=None):
    """`tracker` (fused mode) stops the loop over the token budget or when the batch is full."""
    out = []
    for r in reqs:
        if not ctx.can_be_scheduled(r):
            continue
        if len(out) >= ctx.max_num_requests:
            break
        if r.is_encoder_init_state or r.is_context_init_state or r.is_generation_in_progress_state:
            if tracker is not None and not tracker.try_add(r):
                break
            out.append(r)
            if tracker is not None and tracker.batch_full:
                break
    return out, []
