"""tllm_sched/naive/guaranteed_no_evict.py: GUARANTEED_NO_EVICT and STATIC_BATCH.

Twins: ext/policies/guaranteed_no_evict.cpp, tllm_sched/policies/guaranteed_no_evict.py.
Mirrors GuaranteedNoEvictScheduler: pass 1 admits running generations unconditionally and
reserves their blocks to completion; pass 2 admits disagg-generation-init requests, then
contexts, while their blocks to completion fit (head-of-line) and their LoRA pages fit.
"""

from __future__ import annotations

from tllm_sched.naive.common import INT32_MAX, CapacityContext
from tllm_sched.naive.reuse_skipping import ReuseSkipper


def schedule(ctx: CapacityContext, reqs: list, static_batch: bool = False):
    kv, cross, peft = ctx.kv, ctx.cross_kv, ctx.peft
    avail = kv.num_free_blocks
    avail_cross = cross.num_free_blocks if cross is not None else 0
    max_pages = peft.max_device_pages if peft is not None else INT32_MAX
    claimed, task_ids = 0, set()
    scheduled, pending, pending_disagg = [], [], []
    for r in reqs:
        if not ctx.can_be_scheduled_with_disagg_exception(r):
            continue
        if len(scheduled) >= ctx.max_num_requests:
            break
        if r.is_generation_in_progress_state:
            scheduled.append(r)
            avail -= kv.get_remaining_blocks_to_completion(r)
            if cross is not None:
                avail_cross -= cross.get_remaining_blocks_to_completion(r)
            task = r.lora_task_id
            if task is not None and task not in task_ids:
                claimed += peft.determine_num_pages(r) if peft is not None else 0
                task_ids.add(task)
        elif r.is_disagg_generation_init_state:
            pending_disagg.append(r)
        else:
            pending.append(r)
    if static_batch and scheduled:
        return scheduled, []
    avail_pages = max_pages - claimed
    skipper = ReuseSkipper(kv, reqs, enabled=not static_batch)
    for lst in (pending_disagg, pending):
        for r in lst:
            disagg = r.is_disagg_generation_init_state
            if not disagg and skipper.beneficial_to_skip(r):
                continue
            if len(scheduled) >= ctx.max_num_requests:
                break
            if not (r.is_context_init_state or disagg):
                continue
            need = kv.get_remaining_blocks_to_completion(r)
            need_c = cross.get_remaining_blocks_to_completion(r) if cross is not None else 0
            ok_blocks = need <= avail and (cross is None or need_c <= avail_cross)
            task = r.lora_task_id
            new_task = task is not None and task not in task_ids
            pages = peft.determine_num_pages(r) if (new_task and peft is not None) else 0
            if ok_blocks and pages <= avail_pages:
                scheduled.append(r)
                avail, avail_cross, avail_pages = avail - need, avail_cross - need_c, avail_pages - pages
                if new_task:
                    task_ids.add(task)
            elif not ok_blocks:
                break
    return scheduled, []


def schedule_static_batch(ctx: CapacityContext, reqs: list):
    return schedule(ctx, reqs, static_batch=True)
