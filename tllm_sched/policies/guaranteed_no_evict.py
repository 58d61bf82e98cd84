"""tllm_sched/policies/guaranteed_no_evict.py: GUARANTEED_NO_EVICT and STATIC_BATCH.

C++ twin: ext/policies/guaranteed_no_evict.cpp; python-naive twin: tllm_sched/naive/guaranteed_no_evict.py.
Mirrors GuaranteedNoEvictScheduler. Pass 1 admits running generations unconditionally; pass 2 admits
disagg-generation-init requests, then contexts, while their blocks to completion fit.
Without PEFT pass 2 is a cumulative sum and a first-failure search; with PEFT, where a
page-only failure skips one request, it is a short scalar loop. The serving steady state
(running generations plus a few new contexts) takes a split path: the generations as one block
with one summed question, pass 2 over the contexts alone; with block reuse, where each skip
depends on the claims before it, the whole step is one call to the C++ policy's loop.
"""

from __future__ import annotations

import numpy as np

from tllm_sched.policies.common import (
    CONTEXT,
    DISAGG_GEN_INIT,
    EMPTY,
    Split,
    CapacityContext,
    is_context_init,
    is_generation_in_progress,
    NO_POSITIONS,
    new_task_pages,
    prefix_within,
    task_ids,
)
from tllm_sched.policies.reuse_skipping import make_skipper

INT32_MAX = 2**31 - 1
# Calls a step makes besides key questions (crossing budget 8): the slots, the remaining blocks
# (one question, one more for a cross cache), LoRA pages if any, the chunk sizes.
_KEY_CALLS = 8 - 3


def _classify(ctx: CapacityContext):
    """Pass 1 as masks over the list: (classified, admitted generations)."""
    st = ctx.state
    gate = ctx.can_be_scheduled_with_disagg_exception()
    gen = gate & is_generation_in_progress(st)
    if np.count_nonzero(gen) >= ctx.max_num_requests:
        # The count limit stops pass 1 at the first candidate after the last admitted generation.
        last = int(gen.cumsum().searchsorted(ctx.max_num_requests, side="left"))
        gate = gate.copy()
        gate[last + 1:] = False
        gen = gen.copy()
        gen[last + 1:] = False
    return gate, gen


def _remaining(kv, slots: np.ndarray) -> np.ndarray:
    # Asked for the whole list in one call (a read-only query); entries outside pass 1 go unused.
    return kv.get_remaining_blocks_to_completion_batch(slots)  # int32; numpy sums it in int64


def schedule(ctx: CapacityContext, static_batch: bool = False):
    if ctx.reuse and not static_batch and ctx.plain_split and ctx.cross_kv is None:
        # The split path with block reuse (running generations and contexts, no PEFT, no cross
        # cache), inline (a frame a step): a new context whose uncached prefix another context
        # computes is passed over (reuse_skipping.py), so the admitted contexts need not be a
        # prefix. Each skip depends on the keys claimed before it and the first context that does
        # not fit stops the list, so the step is one C++ call, the C++ policy's loop (design.md),
        # before any state is read here. It returns None (nothing changed) when the list is not of
        # that shape; else the fitting list, generations first, as a Split.
        out = ctx.no_evict_split_fitting(ctx.kv, ctx.listed, ctx.max_num_requests, ctx.no_schedule_until_state,
                                         ctx.no_schedule_after_state)
        if out is not None:
            fitting, n_gen = out
            if n_gen == fitting.size:  # no context admitted (a decode step): no slicing
                return Split.of_parts(fitting, fitting, EMPTY), EMPTY
            return Split.of_parts(fitting, fitting[:n_gen], fitting[n_gen:]), EMPTY
    ctx.read_slots()  # the Python paths
    if ctx.all_generation:
        # Only running generations: pass 1 admits them in order up to the count limit and pass 2
        # has nothing to consider, so no block or page count can change the outcome.
        return slice(0, min(ctx.slots.size, ctx.max_num_requests)), EMPTY
    if ctx.plain_split:
        fitting = _schedule_split(ctx, static_batch)
        if fitting is not None:
            return fitting, EMPTY
    gate, gen = _classify(ctx)
    gens = gen.nonzero()[0]
    if static_batch and gens.size:
        return gens, EMPTY
    pending = gate & ~gen
    if not pending.any():
        return gens, EMPTY  # nothing for pass 2: block counts cannot change the outcome
    rem = _remaining(ctx.kv, ctx.slots)
    rem_cross = _remaining(ctx.cross_kv, ctx.slots) if ctx.cross_kv is not None else None
    avail = ctx.free_blocks() - int(rem[gen].sum())
    avail_cross = None if rem_cross is None else ctx.free_blocks(cross=True) - int(rem_cross[gen].sum())
    avail_pages, seen = INT32_MAX, set()
    pages = None
    if ctx.peft is not None:
        pages = np.zeros(ctx.slots.size, dtype=np.int64)
        pages[gate] = ctx.pages(gate.nonzero()[0])
        lora_g = ctx.lora.take(gens)
        avail_pages = ctx.max_device_pages - int(new_task_pages(lora_g, pages.take(gens), set()).sum())
        seen = task_ids(lora_g)
    state = NoEvictBlocks(ctx, rem, rem_cross, pages, avail, avail_cross, avail_pages, seen, gens.size)
    admitted = [gens]
    is_disagg = pending & (ctx.state == DISAGG_GEN_INIT)
    if is_disagg.any():
        admitted.append(state.run(is_disagg.nonzero()[0], None))
        pending = pending & ~is_disagg
    contexts = pending.nonzero()[0]
    skipper = make_skipper(ctx, _KEY_CALLS - (ctx.cross_kv is not None) - (ctx.peft is not None),
                           enabled=not static_batch)
    if not skipper.enabled:
        admitted.append(state.run(contexts, None))
    else:
        admitted.append(state.run_skipping(contexts, skipper))
    return np.concatenate(admitted), EMPTY


def _schedule_split(ctx: CapacityContext, static_batch: bool):
    """Running generations plus a few waiting contexts (the serving steady state), without PEFT:
    pass 1 takes the generations as a block, pass 2 runs over the contexts only (with block
    reuse: the C++ loop `schedule` tries first). Returns the fitting list as a Split (generations first,
    then the admitted contexts), or None when an other is not a context, a cross cache is
    attached or the count limit cuts pass 1 (the general path decides)."""
    sp = ctx.split
    ignored, n_waiting, n_gen_other, n_other = ctx.kind_counts
    if n_gen_other or n_other or ctx.cross_kv is not None:
        # A generation or disagg-generation-init request among the others; or a cross cache,
        # whose questions the general path asks with fewer calls.
        return None
    n_gen = ctx.slots.size - sp.other.size
    if n_gen >= ctx.max_num_requests:
        return None
    if n_waiting and ctx.reuse and not static_batch:
        return None  # the reuse split loop (`schedule`) declined this list: the general path skips
    gens = sp.gens
    if n_waiting == 0 or (static_batch and n_gen):
        return Split(gens, NO_POSITIONS, EMPTY, gens=gens)
    if not ignored:
        contexts, others = sp.other_slots(), sp.other_state
    else:
        waiting = sp.other[ctx.kinds.of(sp.other_state) == CONTEXT]
        contexts, others = ctx.slots.take(waiting), ctx.state.take(waiting)
    n = min(_fitting_contexts(ctx, gens, contexts), ctx.max_num_requests - n_gen)
    if n == 0:
        return Split(gens, NO_POSITIONS, EMPTY, gens=gens)
    # Generations, then the admitted contexts: a prefix of the list when the contexts are its tail.
    fitting = ctx.slots[:n_gen + n] if not ignored and sp.tail else np.concatenate((gens, contexts[:n]))
    return Split(fitting, np.arange(n_gen, n_gen + n), others[:n], gens=gens, contexts=contexts[:n])


def _fitting_contexts(ctx: CapacityContext, gens: np.ndarray, contexts: np.ndarray) -> int:
    """How many of `contexts` fit in the self cache, in order, once the generations `gens` have
    reserved their blocks to completion (a sum asked for in one call, no array)."""
    avail = ctx.free_blocks() - ctx.kv.get_remaining_blocks_to_completion_sum(gens)
    return prefix_within(_remaining(ctx.kv, contexts), avail)


class NoEvictBlocks:
    """What pass 2 has left (blocks of both caches, LoRA pages, the count) as it admits across its
    lists; arrays are indexed by list position. C++ twin: `NoEvictAdmission`."""

    def __init__(self, ctx, rem, rem_cross, pages, avail, avail_cross, avail_pages, seen, count):
        self.ctx, self.rem, self.rem_cross, self.pages = ctx, rem, rem_cross, pages
        self.avail, self.avail_cross, self.avail_pages, self.seen, self.count = avail, avail_cross, avail_pages, seen, count
        self.stopped = False  # the current list hit a break (blocks or the count limit)

    def run(self, order: np.ndarray, skip) -> np.ndarray:
        ctx = self.ctx
        self.stopped = False
        if skip is not None:
            order = order[~skip]  # skipped requests are passed over
        if not ctx.pending_are_admissible:
            # Only contexts and disagg-gen-init requests are admitted (other states are ignored).
            st = self.ctx.state.take(order)
            order = order[is_context_init(st) | (st == DISAGG_GEN_INIT)]
        room = ctx.max_num_requests - self.count
        if room <= 0 and order.size:
            self.stopped = True
        if order.size == 0 or room <= 0:
            return order[:0]
        if ctx.peft is None:
            return self._run_vectorized(order, room)
        return self._run_scalar(order)

    def run_skipping(self, order: np.ndarray, skipper) -> np.ndarray:
        """`run` with reuse skipping. Keys are asked for window by window (reuse_skipping.py),
        the first reaching where admission must stop if nothing were skipped, each next one only
        if admission gets past the previous."""
        ctx = self.ctx
        need = self.rem.take(order)
        k = max(0, min(prefix_within(need, self.avail), ctx.max_num_requests - self.count))  # if nothing is skipped
        plain = self.rem_cross is None and ctx.peft is None and ctx.pending_are_admissible
        admitted = []
        for part in skipper.windows(order, k + 1):
            skip = skipper.skip_flags(part)
            if plain and not admitted and (part.size > k or part.size == order.size) and not skip[:k + 1].any():
                # Nothing skipped up to where admission stops (the usual case): the prefix stands.
                if k:
                    self.avail -= int(need[:k].sum())
                self.count += k
                self.stopped = k < order.size
                return order[:k]
            admitted.append(self.run(part, skip))
            if self.stopped:
                break
        return admitted[0] if len(admitted) == 1 else np.concatenate(admitted)

    def _run_vectorized(self, order: np.ndarray, room: int) -> np.ndarray:
        # Head-of-line: the first request that does not fit (in either cache) stops the list.
        need = self.rem.take(order)
        n = min(prefix_within(need, self.avail), room)
        if self.rem_cross is not None:
            need_c = self.rem_cross.take(order)
            n = min(n, prefix_within(need_c, self.avail_cross))
            self.avail_cross -= int(need_c[:n].sum())
        self.stopped = n < order.size
        self.avail -= int(need[:n].sum())
        self.count += n
        return order[:n]

    def _run_scalar(self, order: np.ndarray) -> np.ndarray:
        ctx, out = self.ctx, []
        for pos in order.tolist():
            if self.count >= ctx.max_num_requests:
                self.stopped = True
                break
            need, need_c = int(self.rem[pos]), int(self.rem_cross[pos]) if self.rem_cross is not None else 0
            task = int(ctx.lora[pos])
            new_task = task >= 0 and task not in self.seen
            pages = int(self.pages[pos]) if new_task else 0
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
                self.stopped = True
                break  # head-of-line blocking
        return np.array(out, dtype=np.int64)


def schedule_static_batch(ctx: CapacityContext):
    return schedule(ctx, static_batch=True)
