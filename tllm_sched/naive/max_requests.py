"""tllm_sched/naive/max_requests.py: the capacity path without a KV cache: admit by count.

Twins: ext/policies/max_requests.cpp, tllm_sched/policies/max_requests.py. Mirrors
MaxRequestsScheduler.
"""

from __future__ import annotations

from tllm_sched.naive.common import CapacityContext


def schedule(ctx: CapacityContext, reqs: list):
    out = []
    for r in reqs:
        if not ctx.can_be_scheduled(r):
            continue
        if len(out) >= ctx.max_num_requests:
            break
        if r.is_encoder_init_state or r.is_context_init_state or r.is_generation_in_progress_state:
            out.append(r)
    return out, []
