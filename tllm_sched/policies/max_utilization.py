"""tllm_sched/policies/max_utilization.py: MAX_UTILIZATION: admit one step of blocks, pause from the tail.

C++ twin: ext/policies/max_utilization.cpp; python-naive twin: tllm_sched/naive/max_utilization.py.
Mirrors MaxUtilizationScheduler and trySchedulingRequestMaxUtilization. The common case, where
everything up to some request fits, is a cumulative sum and a first-failure search; from the first failure on,
a scalar loop pauses started requests from the tail (one crossing per pause) exactly as C++ does.
When only generations and contexts are listed (no skipping, no pages), one summed question tells
whether the whole list fits, the usual answer. With block reuse (and no PEFT) the loop is the C++
policy's, in one call.
"""

from __future__ import annotations

import numpy as np

from tllm_sched.policies.common import (
    EMPTY,
    IGNORED,
    OTHER,
    CapacityContext,
    Slots,
    Split,
    is_context_init,
    is_generation_in_progress,
    new_task_pages,
    task_ids,
)
from tllm_sched.policies.reuse_skipping import NO_SKIP, make_skipper


# Calls a step makes besides key questions and pauses (crossing budget 8 + 1 per pause): the
# slots, start_scheduling, the blocks needed, LoRA pages if any, the chunk sizes.
_KEY_CALLS = 8 - 4


def _prefix(ctx: CapacityContext, try_pos: np.ndarray, need: np.ndarray, pages: np.ndarray, free: int):
    """How many of `try_pos` fit in order, with the running block and page totals. Blocks needed
    are >= 0, so the totals only grow: the prefix ends at the first total over the free count,
    the count limit or (with PEFT) the page limit."""
    total = need.take(try_pos).cumsum()
    f = min(int(total.searchsorted(free, side="right")), ctx.max_num_requests)
    add_pages = None
    if ctx.peft is not None:
        add_pages = new_task_pages(ctx.lora.take(try_pos), pages.take(try_pos), set())
        f = min(f, int(add_pages.cumsum().searchsorted(ctx.max_device_pages, side="right")))
    return f, total, add_pages


def tried_in_order(ctx: CapacityContext, skipper, gated: np.ndarray, need: np.ndarray, pages: np.ndarray, free: int):
    """(the `gated` positions the loop tries, those the skipper skips left out; `_prefix` of them).
    Skip keys are asked window by window, the next window only if everything so far fits."""
    if not skipper.enabled:
        return gated, _prefix(ctx, gated, need, pages, free)
    reach = min(int((need.take(gated).cumsum() <= free).sum()), ctx.max_num_requests) + 1
    kept = []
    for part in skipper.windows(gated, reach):
        kept.append(part[~skipper.skip_flags(part)])
        try_pos = kept[0] if len(kept) == 1 else np.concatenate(kept)
        prefix = _prefix(ctx, try_pos, need, pages, free)
        if prefix[0] < try_pos.size:
            break
    return try_pos, prefix


def schedule(ctx: CapacityContext):
    if ctx.reuse and ctx.peft is None:
        # With reuse skipping the loop is sequential (each skip depends on the keys claimed before
        # it, each pause on the failure before it): one C++ call, the C++ policy's loop (design.md),
        # before any state is read here. It also splits the fitting list for the micro-batch stage.
        fit, disagg, paused, kinds = ctx.max_utilization_fitting(
            ctx.kv, ctx.listed, ctx.max_num_requests, ctx.two_steps_look_ahead, ctx.no_schedule_until_state,
            ctx.no_schedule_after_state)
        if kinds is not None:  # the count of leading generations (then contexts only), or both lists
            kinds = Split.of_parts(fit, fit[:kinds], fit[kinds:]) if type(kinds) is int else Split.of_parts(fit, *kinds)
        return Slots(fit, EMPTY if disagg is None else disagg, EMPTY if paused is None else paused, kinds), EMPTY
    ctx.read_slots()  # the Python paths
    n = ctx.slots.size
    whole_list = ctx.all_generation or (
        n and ctx.plain_split and not ctx.reuse and ctx.kind_counts[IGNORED] == ctx.kind_counts[OTHER] == 0)
    free = ctx.kv.start_scheduling()
    if whole_list:
        # Every request is tried in list order, nothing skipped: running generations only, or
        # (without PEFT or reuse) generations and contexts. If the whole list fits, a sum asked
        # for in one call says so, and the micro-batch stage gets the list's split.
        two = ctx.two_steps_look_ahead
        if ctx.peft is None and n <= ctx.max_num_requests and ctx.kv.get_needed_blocks_one_step_sum(ctx.slots, two) <= free:
            return slice(0, n), EMPTY
        need = ctx.kv.get_needed_blocks_one_step_batch(ctx.slots, two).astype(np.int64)
        gated = try_pos = np.arange(n)
        skipper = NO_SKIP
    else:
        skipper = make_skipper(ctx, _KEY_CALLS - (ctx.peft is not None))
        gated = ctx.can_be_scheduled_with_disagg_exception().nonzero()[0]
        if gated.size == 0:
            return gated, gated
        # One read-only question for every gated request; skipped ones' answers go unused.
        need = np.zeros(n, dtype=np.int64)
        need[gated] = ctx.kv.get_needed_blocks_one_step_batch(ctx.slots.take(gated), ctx.two_steps_look_ahead)
        try_pos = gated
    pages = np.zeros(n, dtype=np.int64)
    if ctx.peft is not None:
        pages[gated] = ctx.pages(gated)
    try_pos, (f, total, add_pages) = tried_in_order(ctx, skipper, try_pos, need, pages, free)
    if f >= try_pos.size:  # everything fits (the next window is asked for whenever the previous fits)
        return try_pos, try_pos[:0]

    # Scalar continuation from the first failure, in the state the prefix left behind.
    i = int(try_pos[f])
    prefix = try_pos[:f]
    state = _Totals(
        scheduled=prefix.tolist(),
        blocks=int(total[f - 1]) if f else 0,
        pages=int(add_pages[:f].sum()) if add_pages is not None else 0,
        seen=task_ids(ctx.lora.take(prefix)),
        free=free,
    )
    paused = _pause_and_retry(ctx, skipper, state, i, need, pages)
    return np.array(state.scheduled, dtype=np.int64), np.array(paused, dtype=np.int64)


class _Totals:
    __slots__ = ("scheduled", "blocks", "pages", "seen", "free")

    def __init__(self, scheduled, blocks, pages, seen, free):
        self.scheduled, self.blocks, self.pages, self.seen, self.free = scheduled, blocks, pages, seen, free


def _try(ctx: CapacityContext, t: _Totals, i: int, need: np.ndarray, pages: np.ndarray) -> bool:
    if len(t.scheduled) >= ctx.max_num_requests:
        return False
    task = int(ctx.lora[i])
    new_task = task >= 0 and task not in t.seen
    p = int(pages[i]) if new_task else 0
    total = t.blocks + int(need[i])
    if total > t.free or (ctx.max_device_pages is not None and p + t.pages > ctx.max_device_pages):
        return False
    t.blocks, t.pages = total, t.pages + p
    t.scheduled.append(i)
    if new_task:
        t.seen.add(task)
    return True


def _pause_and_retry(ctx, skipper, t: _Totals, i: int, need, pages) -> list:
    st = ctx.state
    gate = ctx.can_be_scheduled_with_disagg_exception()
    started = ctx.can_be_scheduled() & ((is_context_init(st) & ~ctx.first_chunk) | is_generation_in_progress(st))
    paused, end = [], ctx.slots.size
    while i < end:
        if not gate[i] or skipper.beneficial_to_skip(i):
            i += 1
        elif _try(ctx, t, i, need, pages):
            i += 1
        else:  # pause the last started request in [i, end), then retry request i
            cand = started[i:end].nonzero()[0]
            if cand.size == 0:
                break
            j = i + int(cand[-1])
            t.free = ctx.kv.scheduling_remove_sequence(int(ctx.ids[j]))
            paused.append(j)
            end = j
    return paused
