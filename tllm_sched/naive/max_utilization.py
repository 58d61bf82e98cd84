"""tllm_sched/naive/max_utilization.py: MAX_UTILIZATION: admit one step of blocks, pause from the tail.

Twins: ext/policies/max_utilization.cpp, tllm_sched/policies/max_utilization.py. Mirrors
MaxUtilizationScheduler and trySchedulingRequestMaxUtilization: a request that does not fit
pauses the last started request after it, then is tried again.
"""

from __future__ import annotations

from tllm_sched.naive.common import CapacityContext
from tllm_sched.naive.reuse_skipping import ReuseSkipper


def _is_started(ctx: CapacityContext, r) -> bool:
    return ctx.can_be_scheduled(r) and (
        (r.is_context_init_state and not r.is_first_context_chunk) or r.is_generation_in_progress_state)


def schedule(ctx: CapacityContext, reqs: list):
    kv, peft = ctx.kv, ctx.peft
    kv.start_scheduling()
    skipper = ReuseSkipper(kv, reqs, enabled=True)
    scheduled, paused, seen = [], [], set()
    blocks, pages_used = 0, 0
    i, end = 0, len(reqs)
    while i < end:
        r = reqs[i]
        if not ctx.can_be_scheduled_with_disagg_exception(r) or skipper.beneficial_to_skip(r):
            i += 1
            continue
        if len(scheduled) < ctx.max_num_requests:
            task = r.lora_task_id
            new_task = task is not None and task not in seen
            pages = peft.determine_num_pages(r) if (new_task and peft is not None) else 0
            total = blocks + kv.get_needed_blocks_one_step(r, ctx.two_steps_look_ahead)
            fits_peft = peft is None or pages + pages_used <= peft.max_device_pages
            if kv.scheduling_has_free_blocks(total) and fits_peft:
                blocks, pages_used = total, pages_used + pages
                scheduled.append(r)
                if new_task:
                    seen.add(task)
                i += 1
                continue
        j = end - 1
        while j >= i and not _is_started(ctx, reqs[j]):
            j -= 1
        if j < i:
            break
        kv.scheduling_remove_sequence(reqs[j].request_id)
        paused.append(reqs[j])
        end = j
    return scheduled, paused
