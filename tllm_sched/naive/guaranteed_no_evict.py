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
    return admit_pending(ctx, reqs, (pending_disagg, pending), scheduled, (avail, avail_cross, max_pages - claimed),
                         task_ids, static_batch), []


def admit_pending(ctx: CapacityContext, reqs: list, lists: tuple, scheduled: list, avail: tuple, task_ids: set,
                  static_batch: bool, tracker=None) -> list:
    """Pass 2 over `lists` (disagg-generation-init requests, then the other pending ones), adding
    to `scheduled` while the blocks left `avail` (self cache, cross cache, LoRA pages) last.
    `tracker` (fused mode: naive/fused.py's TokenBudgetTracker) also stops it over the token budget
    or a full batch; as TensorRT-LLM's fused loop, it asks no page question of a request whose
    blocks do not fit (the two-stage loop asks it first)."""
    kv, cross, peft = ctx.kv, ctx.cross_kv, ctx.peft
    avail, avail_cross, avail_pages = avail
    skipper = ReuseSkipper(kv, reqs, enabled=not static_batch)
    for lst in lists:
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
            if not ok_blocks and tracker is not None:
                break  # head-of-line blocking
            task = r.lora_task_id
            new_task = task is not None and task not in task_ids
            pages = peft.determine_num_pages(r) if (new_task and peft is not None) else 0
            if not ok_blocks:
                break  # head-of-line blocking
            if pages > avail_pages:
                continue
            if tracker is not None and not tracker.try_add_context(r):  # passes disagg requests over
                break
            scheduled.append(r)
            avail, avail_cross, avail_pages = avail - need, avail_cross - need_c, avail_pages - pages
            if new_task:
                task_ids.add(task)
            if tracker is not None and tracker.batch_full:
                break
    return scheduled


def schedule_static_batch(ctx: CapacityContext, reqs: list):
    return schedule(ctx, reqs, static_batch=True)
