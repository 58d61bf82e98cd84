"""tllm_sched/policies/max_requests.py: the capacity path without a KV cache: admit by count.

C++ twin: ext/policies/max_requests.cpp; python-naive twin: tllm_sched/naive/max_requests.py.
Mirrors MaxRequestsScheduler.
"""

from __future__ import annotations


from tllm_sched.policies.common import ENCODER_INIT, EMPTY, CapacityContext, is_context_init, is_generation_in_progress


def schedule(ctx: CapacityContext):
    ctx.read_slots()
    if ctx.all_generation:
        return slice(0, min(ctx.slots.size, ctx.max_num_requests)), EMPTY
    st = ctx.state
    ok = ctx.can_be_scheduled() & ((st == ENCODER_INIT) | is_context_init(st) | is_generation_in_progress(st))
    return ok.nonzero()[0][: ctx.max_num_requests], EMPTY
