"""tllm_sched/policies/guaranteed_no_evict.py: GUARANTEED_NO_EVICT and STATIC_BATCH.

C++ twin: ext/policies/guaranteed_no_evict.cpp. Mirrors GuaranteedNoEvictScheduler
(scheduler.md §2.4). Pass 1 admits running generations unconditionally; pass 2 admits
disagg-generation-init requests, then contexts, while their blocks to completion fit.
Without PEFT pass 2 is a cumulative sum and a first-failure search; with PEFT, where a
page-only failure skips one request, it is a short scalar loop.
"""

from __future__ import annotations

import numpy as np

from tllm_sched.policies.common import (
    DISAGG_GEN_INIT,
    EMPTY,
    StepContext,
    is_context_init,
    is_generation_in_progress,
    new_task_pages,
    task_ids,
)
from tllm_sched.policies.reuse_skipping import make_skipper

INT32_MAX = 2**31 - 1


def _remaining(kv, slots: np.ndarray) -> np.ndarray:
    if kv is None or slots.size == 0:
        return np.zeros(slots.size, dtype=np.int64)
    return kv.get_remaining_blocks_to_completion_batch(slots).astype(np.int64)


def _classify(ctx: StepContext):
    """Pass 1: positions of admitted generations, pending disagg-gen-init and pending contexts."""
    cand = np.flatnonzero(ctx.schedulable_with_disagg_exception())
    is_gen = is_generation_in_progress(ctx.state[cand])
    before = np.cumsum(is_gen) - is_gen  # generations admitted before each candidate
    k = int(np.searchsorted(before, ctx.max_num_requests, side="left"))  # the count limit stops pass 1
    cand, is_gen = cand[:k], is_gen[:k]
    rest = cand[~is_gen]
    disagg = ctx.state[rest] == DISAGG_GEN_INIT
    return cand, is_gen, rest[disagg], rest[~disagg]


def schedule(ctx: StepContext, static_batch: bool = False):
    if ctx.all_generation:
        # Only running generations: pass 1 admits them in order up to the count limit and pass 2
        # has nothing to consider, so no block or page count can change the outcome.
        return np.arange(min(ctx.slots.size, ctx.max_num_requests)), EMPTY
    classified, is_gen, pending_disagg, pending = _classify(ctx)
    gens = classified[is_gen]
    classified_slots = ctx.slots.take(classified)
    rem = _remaining(ctx.kv, classified_slots)
    rem_cross = _remaining(ctx.cross_kv, classified_slots) if ctx.cross_kv is not None else None
    avail = (ctx.kv.num_free_blocks if ctx.kv is not None else 0) - int(rem[is_gen].sum())
    avail_cross = None
    if ctx.cross_kv is not None:
        avail_cross = ctx.cross_kv.num_free_blocks - int(rem_cross[is_gen].sum())
    pages = ctx.pages(classified)
    claimed = int(new_task_pages(ctx.lora[gens], pages[is_gen], set()).sum())
    seen = task_ids(ctx.lora[gens])
    if static_batch and gens.size:
        return gens, EMPTY

    # Index into the pass-1 arrays by list position.
    pos_of = np.full(ctx.slots.size, -1, dtype=np.int64)
    pos_of[classified] = np.arange(classified.size)
    state = _Pass2(ctx, rem, rem_cross, pages, pos_of, avail, avail_cross,
                   (ctx.max_device_pages or INT32_MAX) - claimed, seen, gens.size)
    skipper = make_skipper(ctx, enabled=not static_batch)
    admitted = [gens]
    admitted.append(state.run(pending_disagg, np.zeros(pending_disagg.size, dtype=bool)))
    admitted.append(state.run(pending, skipper.skip_flags(pending)))
    return np.concatenate(admitted), EMPTY


class _Pass2:
    """Running totals of pass 2 across its two lists."""

    def __init__(self, ctx, rem, rem_cross, pages, pos_of, avail, avail_cross, avail_pages, seen, count):
        self.ctx, self.rem, self.rem_cross, self.pages, self.pos_of = ctx, rem, rem_cross, pages, pos_of
        self.avail, self.avail_cross, self.avail_pages, self.seen, self.count = avail, avail_cross, avail_pages, seen, count

    def run(self, order: np.ndarray, skip: np.ndarray) -> np.ndarray:
        ctx = self.ctx
        st = ctx.state[order]
        # Skipped requests are passed over; other states are ignored without taking a place.
        order = order[~skip & (is_context_init(st) | (st == DISAGG_GEN_INIT))]
        room = ctx.max_num_requests - self.count
        if order.size == 0 or room <= 0:
            return order[:0]
        if ctx.peft is None:
            return self._run_vectorized(order, room)
        return self._run_scalar(order)

    def _run_vectorized(self, order: np.ndarray, room: int) -> np.ndarray:
        p = self.pos_of[order]
        need = self.rem[p]
        fits = np.cumsum(need) <= self.avail
        if self.rem_cross is not None:
            need_c = self.rem_cross[p]
            fits &= np.cumsum(need_c) <= self.avail_cross
        n = int(np.argmin(fits)) if not fits.all() else order.size  # head-of-line: first failure stops
        n = min(n, room)
        self.avail -= int(need[:n].sum())
        if self.rem_cross is not None:
            self.avail_cross -= int(need_c[:n].sum())
        self.count += n
        return order[:n]

    def _run_scalar(self, order: np.ndarray) -> np.ndarray:
        ctx, out = self.ctx, []
        for pos in order.tolist():
            if self.count >= ctx.max_num_requests:
                break
            i = int(self.pos_of[pos])
            need, need_c = int(self.rem[i]), int(self.rem_cross[i]) if self.rem_cross is not None else 0
            task = int(ctx.lora[pos])
            new_task = task >= 0 and task not in self.seen
            pages = int(self.pages[i]) if new_task else 0
            ok_blocks = need <= self.avail and (self.rem_cross is None or need_c <= self.avail_cross)
            if ok_blocks and pages <= self.avail_pages:
                out.append(pos)
                self.count += 1
                self.avail -= need
                if self.rem_cross is not None:
                    self.avail_cross -= need_c
                self.avail_pages -= pages
                if new_task:
                    self.seen.add(task)
            elif not ok_blocks:
                break  # head-of-line blocking
        return np.array(out, dtype=np.int64)


def schedule_static_batch(ctx: StepContext):
    return schedule(ctx, static_batch=True)
