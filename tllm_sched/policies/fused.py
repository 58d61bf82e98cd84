"""tllm_sched/policies/fused.py: the fused single pass, batched.

C++ twin: ext/policies/fused.cpp; python-naive twin: tllm_sched/naive/fused.py. Mirrors TensorRT-LLM's
2026 UnifiedScheduler (unified_scheduler.py): `TokenBudget` is its TokenBudgetTracker, asked from
inside the capacity loops, and `finalize` chunks and sorts. design.md, "The fused mode", lists how
it differs from the two-stage mode.

The policies below ask every cache question they need up front in batched calls (the same
crossings as the two-stage policies), then decide. The serving steady state (running generations
and waiting contexts, no PEFT, one beam width) is decided with cumulative sums; anything else
(PEFT pages, mixed beam widths, MAX_UTILIZATION pauses) walks the requests in a plain loop over
arrays gathered once, exactly as the C++ loop does.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from tllm_sched import _core
from tllm_sched.micro_batch_scheduler import context_too_long
from tllm_sched.policies.common import (
    CONTEXT_INIT,
    DISAGG_GEN_INIT,
    EMPTY,
    ENCODER_INIT,
    GEN_IN_PROGRESS,
    GEN_TO_COMPLETE,
    IGNORED,
    OTHER,
    CapacityContext,
    is_context_init,
    is_generation_in_progress,
    prefix_within,
)
from tllm_sched.policies.reuse_skipping import make_skipper, windows

INT32_MAX = 2**31 - 1
FULL, OVER_BUDGET, CONTINUE = -1, 0, 1  # try_add_generation's answers (TensorRT-LLM's rc)
_WITH_LORA, _WITH_DRAFTS, _WIDE_BEAMS = range(3)  # RequestTable.tallies() entries


def fused_max_context_length(configured: Optional[int], max_num_tokens: Optional[int]) -> Optional[int]:
    """TensorRT-LLM's tracker fixes max_context_length = max_num_tokens; a smaller configured
    limit still applies."""
    if configured is not None and max_num_tokens is not None:
        return min(configured, max_num_tokens)
    return configured if configured is not None else max_num_tokens


class TokenBudget:
    """TensorRT-LLM's TokenBudgetTracker over positions of one step's active list. Decisions are
    recorded as positions; `finalize` chunks, commits (one call) and sorts."""

    __slots__ = ("ctx", "micro", "tallies", "budget", "limit", "max_ctx", "chunking", "inflight", "used", "size",
                 "beam", "num_fitting", "full", "gens", "plain", "items")

    def __init__(self, ctx: CapacityContext, micro, tallies, config, inflight_ids):
        self.ctx, self.micro, self.tallies = ctx, micro, tallies
        self.budget = config.max_num_tokens  # None: unlimited
        self.limit = config.max_batch_size
        self.max_ctx = fused_max_context_length(config.max_context_length, config.max_num_tokens)
        self.chunking = config.chunking is not None
        self.inflight = None  # bool per position: in flight in another micro batch
        if inflight_ids is not None and len(inflight_ids):
            self.inflight = np.isin(ctx.ids, inflight_ids)
        self.used = self.size = self.beam = self.num_fitting = 0
        self.full = False
        self.gens, self.plain, self.items = [], [], []  # position arrays (or ints) in admission order

    # ------------------------------------------------------------------ per request (TensorRT-LLM's methods)
    def _count(self, k: int = 1) -> None:
        self.size += k
        self.num_fitting += k
        if self.size >= self.limit:
            self.full = True

    def _over(self, tokens: int) -> bool:
        return self.budget is not None and self.used + tokens > self.budget

    def _context(self, p: int) -> bool:
        """Adds the context at position p (not counted yet); False: over the budget."""
        if self.chunking:
            self.items.append(p)  # never over budget: finalize fits the chunks
            return True
        c, s = self.ctx.cols, int(self.ctx.slots[p])
        tokens = int(c["num_tokens"][s]) + int(c["num_draft_tokens"][s])
        if self.max_ctx is not None and tokens > self.max_ctx:
            raise _core.SchedulingError(context_too_long(int(c["request_id"][s]), tokens, self.max_ctx))
        if self._over(tokens):
            return False
        self.plain.append(p)
        self.used += tokens
        return True

    def _generation(self, p: int) -> int:
        """Adds the generation at position p: CONTINUE (added), OVER_BUDGET, or FULL (passed over:
        another beam width)."""
        c, s = self.ctx.cols, int(self.ctx.slots[p])
        bw = int(c["beam_width_by_iter"][s])
        tokens = bw + int(c["num_draft_tokens"][s])
        if self._over(tokens):
            return OVER_BUDGET
        if self.beam == 0:
            self.beam = bw
        elif self.beam != bw:
            return FULL
        self.gens.append(p)
        self.used += tokens
        return CONTINUE

    def _in_flight(self, p: int) -> bool:
        return self.inflight is not None and bool(self.inflight[p])

    def try_add(self, p: int) -> bool:
        """Any request: False when over the budget. Passes over (True, not counted) a request in
        flight, disagg-generation-init or outside [CONTEXT_INIT, GENERATION_TO_COMPLETE)."""
        st = int(self.ctx.state[p])
        if self._in_flight(p) or not CONTEXT_INIT <= st < GEN_TO_COMPLETE:
            return True
        if st == CONTEXT_INIT:  # exact, as TensorRT-LLM's tracker: other states go the generation way
            if not self._context(p):
                return False
        else:
            r = self._generation(p)
            if r == OVER_BUDGET:
                return False
            if r == FULL:
                return True
        self._count()
        return True

    def try_add_generation(self, p: int) -> int:
        if self._in_flight(p):
            return CONTINUE
        r = self._generation(p)
        if r != CONTINUE:
            return CONTINUE if r == FULL else OVER_BUDGET
        self._count()
        return FULL if self.full else CONTINUE

    def try_add_context(self, p: int) -> bool:
        if self._in_flight(p) or int(self.ctx.state[p]) == DISAGG_GEN_INIT:
            return True
        if not self._context(p):
            return False
        self._count()
        return True

    # ------------------------------------------------------------------ many requests at once
    def counted(self, pos: np.ndarray) -> Optional[np.ndarray]:
        """bool per position: not in flight (None: all of them)."""
        return None if self.inflight is None else ~self.inflight.take(pos)

    def generation_tokens(self, pos: np.ndarray):
        """(beam width, tokens per generation, or an int when all are equal) of the generations at
        `pos`, or None when their beam widths differ (the per-request walk skips requests)."""
        c, tl = self.ctx.cols, self.tallies
        b = 1
        slots = None
        if tl[_WIDE_BEAMS]:
            slots = self.ctx.slots.take(pos)
            beams = c["beam_width_by_iter"].take(slots)
            if beams.size:
                b = int(beams[0])
                if self.beam not in (0, b) or np.count_nonzero(beams != b):
                    return None
        if not tl[_WITH_DRAFTS]:
            return b, b
        slots = self.ctx.slots.take(pos) if slots is None else slots
        return b, c["num_draft_tokens"].take(slots).astype(np.int64) + b

    def walk(self, pos: np.ndarray, tokens, counted: Optional[np.ndarray]):
        """How many of `pos` (in order, each counted where `counted`, budgeted `tokens` each)
        the tracker takes, and why it stops: (k, OVER_BUDGET: pos[k] is over the budget; FULL:
        pos[k - 1] filled the batch; CONTINUE: it took them all). Records nothing."""
        n = pos.size
        left = None if self.budget is None else self.budget - self.used
        room = self.limit - self.size
        if counted is None and isinstance(tokens, int):  # equal tokens, all counted (the decode step)
            k_over = n if left is None or tokens == 0 else min(n, left // tokens)
            k_full = room - 1 if room <= n else n
        else:
            tok = np.broadcast_to(np.asarray(tokens, dtype=np.int64), (n,))
            if counted is not None:
                tok = tok * counted
            k_over = n if left is None else int(tok.cumsum().searchsorted(left, side="right"))
            cnt = np.arange(1, n + 1) if counted is None else counted.cumsum()
            k_full = int(cnt.searchsorted(room, side="left"))  # n when never full
        if k_full < k_over:
            return k_full + 1, FULL
        if k_over < n:
            return k_over, OVER_BUDGET
        return n, CONTINUE

    def take_generations(self, pos: np.ndarray, beam: int, tokens, counted: Optional[np.ndarray]) -> None:
        """Records the generations `pos` (a prefix `walk` allowed) of beam width `beam`."""
        if counted is not None:
            pos = pos[counted]
            if not isinstance(tokens, int):
                tokens = tokens[counted]
        if pos.size == 0:
            return
        self.beam = beam
        self.gens.append(pos)
        self.used += tokens * pos.size if isinstance(tokens, int) else int(tokens.sum())
        self._count(int(pos.size))

    def context_tokens(self, pos: np.ndarray, counted: Optional[np.ndarray]):
        """Budget tokens of the contexts `pos` (0 where not counted; None with chunking, where
        contexts are never over budget), after checking their lengths."""
        if self.chunking:
            return None
        c = self.ctx.cols
        slots = self.ctx.slots.take(pos)
        tok = c["num_tokens"].take(slots).astype(np.int64)
        if self.tallies[_WITH_DRAFTS]:
            tok += c["num_draft_tokens"].take(slots)
        return tok if counted is None else tok * counted

    def first_too_long(self, tokens) -> int:
        """The first index whose context is longer than max_context_length (INT32_MAX: none)."""
        if tokens is None or self.max_ctx is None or tokens.size == 0:
            return INT32_MAX
        bad = tokens > self.max_ctx
        return int(bad.argmax()) if bad.any() else INT32_MAX

    def fail_too_long(self, p: int) -> None:
        self._context(int(p))  # raises

    def take_contexts(self, pos: np.ndarray, tokens, counted: Optional[np.ndarray]) -> None:
        if pos.size == 0:
            return
        taken = pos if counted is None else pos[counted]
        (self.items if self.chunking else self.plain).append(taken)
        if tokens is not None:
            self.used += int(tokens.sum())
        if taken.size:
            self._count(int(taken.size))

    # ------------------------------------------------------------------ the end of the step
    def finalize(self):
        """(context slots, generation slots, num_fitting): chunk sizes committed, LoRA order."""
        micro, slots = self.micro, self.ctx.slots
        gens = _slots_of(slots, self.gens)
        generation = micro._sort_lora(gens)
        if not self.chunking:
            return micro._sort_lora(_slots_of(slots, self.plain)), generation, self.num_fitting
        items = _slots_of(slots, self.items)
        d = self.ctx.cols["num_draft_tokens"].take(items) if self.tallies[_WITH_DRAFTS] else None
        context, last = micro._chunk(items, d, self.used, self.budget)
        return micro._sort(context, last is not None, last), generation, self.num_fitting


def _slots_of(slots: np.ndarray, parts: list) -> np.ndarray:
    if not parts:
        return EMPTY
    if len(parts) == 1 and not isinstance(parts[0], int):
        return slots.take(parts[0])
    return slots.take(np.concatenate([np.atleast_1d(p) for p in parts]).astype(np.intp))



# ---------------------------------------------------------------------- walks shared by the policies

def _walk_generations(tb: TokenBudget, gens: np.ndarray):
    """try_add_generation over the running generations `gens`, in order: (how many the capacity
    loop takes, why it stops: OVER_BUDGET, FULL or CONTINUE)."""
    per = tb.generation_tokens(gens)
    if per is None:  # beam widths differ: some are passed over, one by one
        for k, p in enumerate(gens.tolist()):
            rc = tb.try_add_generation(p)
            if rc != CONTINUE:
                return (k, OVER_BUDGET) if rc == OVER_BUDGET else (k + 1, FULL)
        return gens.size, CONTINUE
    counted = tb.counted(gens)
    k, why = tb.walk(gens, per[1], counted)
    tokens = per[1] if isinstance(per[1], int) else per[1][:k]
    tb.take_generations(gens[:k], per[0], tokens, None if counted is None else counted[:k])
    return k, why


def _walk_any(tb: TokenBudget, cand: np.ndarray) -> int:
    """try_add over `cand` in order: how many the capacity loop takes before the tracker stops
    it (a request the tracker passes over is still taken)."""
    st = tb.ctx.state.take(cand)
    is_ctx = st == CONTEXT_INIT  # exact, as TensorRT-LLM's tracker
    is_gen = (st > CONTEXT_INIT) & (st < GEN_TO_COMPLETE)
    gen_pos = cand[is_gen]
    per = tb.generation_tokens(gen_pos) if gen_pos.size else (1, 1)
    if per is None:
        for k, p in enumerate(cand.tolist()):
            if not tb.try_add(p):
                return k
            if tb.full:
                return k + 1
        return cand.size
    counted = is_ctx | is_gen
    if tb.inflight is not None:
        counted &= ~tb.inflight.take(cand)
    tokens = np.zeros(cand.size, dtype=np.int64)
    tokens[is_gen] = per[1]
    ctx_tok = tb.context_tokens(cand[is_ctx], None)
    if ctx_tok is not None:
        tokens[is_ctx] = ctx_tok
    tokens *= counted
    k, why = tb.walk(cand, tokens, counted)
    bad = tb.first_too_long(np.where(is_ctx, tokens, 0)) if ctx_tok is not None else INT32_MAX
    if bad < k or (bad == k and why == OVER_BUDGET):
        tb.fail_too_long(cand[bad])
    g, c = is_gen[:k], is_ctx[:k]
    tb.take_generations(cand[:k][g], per[0], tokens[:k][g], counted[:k][g])
    tb.take_contexts(cand[:k][c], None if ctx_tok is None else tokens[:k][c], counted[:k][c])
    return k


# ---------------------------------------------------------------------- MaxRequests (no KV cache)

def schedule_max_requests(ctx: CapacityContext, tb: TokenBudget):
    st = ctx.state
    ok = ctx.can_be_scheduled() & ((st == ENCODER_INIT) | is_context_init(st) | is_generation_in_progress(st))
    cand = ok.nonzero()[0][: ctx.max_num_requests]
    return cand[: _walk_any(tb, cand)], EMPTY


# ---------------------------------------------------------------------- MAX_UTILIZATION

def schedule_max_utilization(ctx: CapacityContext, tb: TokenBudget):
    free = ctx.kv.start_scheduling()
    n = ctx.slots.size
    whole_list = ctx.all_generation or (
        n and ctx.plain_split and not ctx.reuse and ctx.kind_counts[IGNORED] == ctx.kind_counts[OTHER] == 0)
    if (whole_list and ctx.peft is None and n <= ctx.max_num_requests
            and ctx.kv.get_needed_blocks_one_step_sum(ctx.slots, ctx.two_steps_look_ahead) <= free):
        # Every request fits its blocks, in list order, so only the tracker can stop the loop.
        return slice(0, _walk_any(tb, np.arange(n))), EMPTY
    return _max_utilization_loop(ctx, tb, free)


def _max_utilization_loop(ctx: CapacityContext, tb: TokenBudget, free: int):
    """The loop as C++ runs it, over arrays asked for in one call each (pauses: one call each)."""
    n = ctx.slots.size
    gate = ctx.can_be_scheduled_with_disagg_exception()
    gated = gate.nonzero()[0]
    need = np.zeros(n, dtype=np.int64)
    need[gated] = ctx.kv.get_needed_blocks_one_step_batch(ctx.slots.take(gated), ctx.two_steps_look_ahead)
    pages = np.zeros(n, dtype=np.int64)
    if ctx.peft is not None:
        pages[gated] = ctx.pages(gated)
    st = ctx.state
    started = ctx.can_be_scheduled() & ((is_context_init(st) & ~ctx.first_chunk) | is_generation_in_progress(st))
    lora = ctx.lora.tolist() if ctx.peft is not None else None
    skipper = make_skipper(ctx)
    gate_l, need_l, pages_l = gate.tolist(), need.tolist(), pages.tolist()
    max_pages = ctx.max_device_pages
    scheduled, paused, seen = [], [], set()
    blocks = used_pages = 0
    i, end = 0, n
    while i < end:
        if not gate_l[i] or skipper.beneficial_to_skip(i):
            i += 1
            continue
        if len(scheduled) < ctx.max_num_requests:
            total = blocks + need_l[i]
            task = lora[i] if lora is not None else -1
            new_task = task >= 0 and task not in seen
            p = pages_l[i] if new_task else 0
            if total <= free and (max_pages is None or p + used_pages <= max_pages):
                if not tb.try_add(i):
                    break  # pausing frees blocks, not tokens
                blocks, used_pages = total, used_pages + p
                scheduled.append(i)
                if new_task:
                    seen.add(task)
                if tb.full:
                    break
                i += 1
                continue
        cand = started[i:end].nonzero()[0]
        if cand.size == 0:
            break
        j = i + int(cand[-1])
        free = ctx.kv.scheduling_remove_sequence(int(ctx.ids[j]))
        paused.append(j)
        end = j
    return np.array(scheduled, dtype=np.int64), np.array(paused, dtype=np.int64)


# ---------------------------------------------------------------------- GUARANTEED_NO_EVICT, STATIC_BATCH

def schedule_guaranteed_no_evict(ctx: CapacityContext, tb: TokenBudget, static_batch: bool = False):
    st, n, cap = ctx.state, ctx.slots.size, ctx.max_num_requests
    # Pass 1: running generations (the exact state, as TensorRT-LLM's fused loop) while the token
    # budget lasts; the others before the stop are classified for pass 2.
    if ctx.split.other.size == 0:
        gens = np.arange(min(n, cap))
        k, why = _walk_generations(tb, gens)
        return slice(0, k), EMPTY
    gate = ctx.can_be_scheduled_with_disagg_exception()
    is_gen = gate & (st == GEN_IN_PROGRESS)
    gens = is_gen.nonzero()[0][:cap]
    k, why = _walk_generations(tb, gens)
    admitted = gens[:k]
    if tb.full or k >= cap or (static_batch and k):
        return admitted, EMPTY
    pending = gate & ~is_gen
    if why == OVER_BUDGET:
        pending[gens[k]:] = False  # requests after the break are never classified
    disagg = (pending & (st == DISAGG_GEN_INIT)).nonzero()[0]
    # Other states left in pass 2 only meet the count check, which no admission can change: dropped.
    contexts = (pending & is_context_init(st)).nonzero()[0]
    if disagg.size == 0 and contexts.size == 0:
        return admitted, EMPTY
    state = _Pass2(ctx, tb, admitted, disagg, contexts)
    taken = [admitted, state.run(disagg, None)]
    skipper = make_skipper(ctx, enabled=not static_batch)
    if not skipper.enabled:
        taken.append(state.run(contexts, None))
    else:
        reach = min(prefix_within(state.need_of(contexts), state.avail), state.room) + 1
        for part in windows(contexts, reach):
            taken.append(state.run(part, skipper.skip_flags(part)))
            if state.stopped:
                break
    return np.concatenate(taken), EMPTY


def schedule_static_batch(ctx: CapacityContext, tb: TokenBudget):
    return schedule_guaranteed_no_evict(ctx, tb, static_batch=True)


class _Pass2:
    """What GUARANTEED_NO_EVICT's pass 2 has left (blocks of both caches, pages, the count) as it
    admits: disagg-generation-init requests (blocks and pages only), then contexts (the tracker too)."""

    def __init__(self, ctx: CapacityContext, tb: TokenBudget, admitted, disagg, contexts):
        self.ctx, self.tb = ctx, tb
        kv, cross, slots = ctx.kv, ctx.cross_kv, ctx.slots
        n = slots.size
        self.need = np.zeros(n, dtype=np.int64)
        self.need_c = None if cross is None else np.zeros(n, dtype=np.int64)
        self.pages = None
        if cross is None and ctx.peft is None:
            # The serving step: one sum for the admitted generations, one array for the rest.
            asked = np.concatenate((disagg, contexts))
            self.need[asked] = kv.get_remaining_blocks_to_completion_batch(slots.take(asked))
            self.avail = ctx.free_blocks() - (kv.get_remaining_blocks_to_completion_sum(slots.take(admitted))
                                              if admitted.size else 0)
            self.avail_c = 0
        else:  # one array per cache for the whole list, fewer calls in all
            self.need[:] = kv.get_remaining_blocks_to_completion_batch(slots)
            self.avail = ctx.free_blocks() - int(self.need[admitted].sum())
            self.avail_c = 0
            if cross is not None:
                self.need_c[:] = cross.get_remaining_blocks_to_completion_batch(slots)
                self.avail_c = ctx.free_blocks(cross=True) - int(self.need_c[admitted].sum())
            if ctx.peft is not None:
                self.pages = ctx.pages(np.arange(n))
        self.avail_pages, self.seen = INT32_MAX, set()
        if ctx.peft is not None:
            self.avail_pages = ctx.max_device_pages
            for task, p in zip(ctx.lora.take(admitted).tolist(), self.pages[admitted].tolist()):
                if task >= 0 and task not in self.seen:
                    self.seen.add(task)
                    self.avail_pages -= p
        self.room = ctx.max_num_requests - admitted.size
        self.stopped = False

    def need_of(self, pos: np.ndarray) -> np.ndarray:
        return self.need.take(pos)

    def run(self, order: np.ndarray, skip: Optional[np.ndarray]) -> np.ndarray:
        """Admits from `order` (minus the skipped) until a break; returns the admitted positions."""
        if skip is not None:
            order = order[~skip]
        self.stopped = False
        if order.size == 0:
            return order
        if self.room <= 0:
            self.stopped = True
            return order[:0]
        if self.pages is not None:
            return self._run_scalar(order)
        need = self.need.take(order)
        k = min(prefix_within(need, self.avail), self.room)  # the count, then blocks, stop the list
        if self.need_c is not None:
            k = min(k, prefix_within(self.need_c.take(order), self.avail_c))
        is_ctx = self.ctx.state.take(order) != DISAGG_GEN_INIT
        if is_ctx.any():  # disagg requests pass the tracker over; contexts meet it
            k = self._tracker_prefix(order, k)
        self.stopped = self.stopped or k < order.size
        self._admit(order[:k])
        return order[:k]

    def _tracker_prefix(self, order: np.ndarray, k_cap: int) -> int:
        """How many of the contexts `order` the loop admits when the count and blocks allow `k_cap`:
        the tracker may stop it earlier (over budget, batch full) or fail a too-long context."""
        tb = self.tb
        counted = tb.counted(order)
        tokens = tb.context_tokens(order, counted)
        k, why = tb.walk(order, 0 if tokens is None else tokens, counted)
        bad = tb.first_too_long(tokens)
        last_evaluated = k if why == OVER_BUDGET else k - 1
        if bad < k_cap and bad <= last_evaluated:
            tb.fail_too_long(order[bad])
        k = min(k, k_cap)
        if why == FULL and k == order.size:
            self.stopped = True
        tb.take_contexts(order[:k], None if tokens is None else tokens[:k], None if counted is None else counted[:k])
        if tb.full:
            self.stopped = True
        return k

    def _admit(self, pos: np.ndarray) -> None:
        self.avail -= int(self.need[pos].sum())
        if self.need_c is not None:
            self.avail_c -= int(self.need_c[pos].sum())
        self.room -= pos.size

    def _run_scalar(self, order: np.ndarray) -> np.ndarray:
        """With PEFT pages, where a page shortage passes one request over: request by request."""
        ctx, tb, out = self.ctx, self.tb, []
        lora = ctx.lora
        for p in order.tolist():
            if self.room <= 0:
                self.stopped = True
                break
            need, need_c = int(self.need[p]), int(self.need_c[p]) if self.need_c is not None else 0
            if need > self.avail or (self.need_c is not None and need_c > self.avail_c):
                self.stopped = True
                break  # head-of-line blocking
            task = int(lora[p])
            new_task = task >= 0 and task not in self.seen
            pages = int(self.pages[p]) if new_task else 0
            if pages > self.avail_pages:
                continue
            self.avail_pages -= pages
            if new_task:
                self.seen.add(task)
            if not tb.try_add_context(p):
                self.stopped = True
                break
            out.append(p)
            self.avail, self.avail_c, self.room = self.avail - need, self.avail_c - need_c, self.room - 1
            if tb.full:
                self.stopped = True
                break
        return np.array(out, dtype=np.int64)
