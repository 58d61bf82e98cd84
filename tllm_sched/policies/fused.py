"""tllm_sched/policies/fused.py: the fused single pass, batched.

C++ twin: ext/policies/fused.cpp; python-naive twin: tllm_sched/naive/fused.py. Mirrors TensorRT-LLM's
2026 UnifiedScheduler (unified_scheduler.py): `TokenBudget` is its TokenBudgetTracker, asked from
inside the capacity loops, and `finalize` chunks and sorts. design.md, "The fused mode", lists how
it differs from the two-stage mode.

The policies ask every cache question up front in batched calls (the two-stage policies' crossings),
then decide. The serving step (running generations as one block, a few waiting contexts) is a
handful of sums; a list with disagg requests, requests in flight or a mid-list stop takes an array
path over list positions; PEFT pages, mixed beam widths and MAX_UTILIZATION pauses walk the
requests one by one over arrays gathered once, exactly as the C++ loop does.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from tllm_sched import _core
from tllm_sched.micro_batch_scheduler import context_too_long
from tllm_sched.policies import chunking
from tllm_sched.policies.common import (
    CONTEXT,
    CONTEXT_INIT,
    DISAGG_GEN_INIT,
    EMPTY,
    ENCODER_INIT,
    GEN_IN_PROGRESS,
    GEN_TO_COMPLETE,
    IGNORED,
    NO_POSITIONS,
    OTHER,
    FEW,
    CapacityContext,
    Split,
    is_context_init,
    is_generation_in_progress,
    prefix_within,
)
from tllm_sched.policies.max_utilization import tried_in_order
from tllm_sched.policies.reuse_skipping import ReuseSkipper, make_skipper

# Calls a step may spend on skip keys within the crossing budget (8, + 1 per pause), besides
# its other calls: GUARANTEED_NO_EVICT the slots, the remaining blocks (one more for a cross
# cache), LoRA pages if any, the chunk sizes; its split path with reuse the slots, the remaining
# blocks (generations and contexts in one question), the chunk sizes; MAX_UTILIZATION the slots,
# start_scheduling, the blocks needed, LoRA pages if any, the chunk sizes.
_NO_EVICT_KEY_CALLS = 8 - 3
_NO_EVICT_SPLIT_KEY_CALLS = 8 - 3
_MAX_UTILIZATION_KEY_CALLS = 8 - 4


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
    """TensorRT-LLM's TokenBudgetTracker for one step. The per-request methods take list positions
    (as the C++ loop takes slots); the array methods take slot arrays. Decisions are recorded as
    slots; `finalize` chunks, commits (one call) and sorts."""

    __slots__ = ("ctx", "micro", "tallies", "budget", "limit", "max_ctx", "chunking", "inflight", "used", "size",
                 "beam", "num_fitting", "full", "gens", "plain", "items")

    def __init__(self, micro, tallies, config):
        """Built once per scheduler; `reset` starts a step."""
        self.micro, self.tallies = micro, tallies
        self.budget = config.max_num_tokens  # None: unlimited
        self.limit = config.max_batch_size
        self.max_ctx = fused_max_context_length(config.max_context_length, config.max_num_tokens)
        self.chunking = config.chunking is not None

    def reset(self, ctx: CapacityContext, inflight_ids) -> "TokenBudget":
        self.ctx = ctx
        self.inflight = None  # bool per list position: in flight in another micro batch
        if inflight_ids is not None and len(inflight_ids):
            self.inflight = np.isin(ctx.ids, inflight_ids)
        self.used = self.size = self.beam = self.num_fitting = 0
        self.full = False
        self.gens, self.plain, self.items = [], [], []  # slot arrays (or ints) in admission order
        return self

    # ------------------------------------------------------------------ one request (by list position)
    def _count(self, k: int = 1) -> None:
        self.size += k
        self.num_fitting += k
        if self.size >= self.limit:
            self.full = True

    def _over(self, tokens: int) -> bool:
        return self.budget is not None and self.used + tokens > self.budget

    def _context(self, p: int) -> bool:
        """Adds the context at position p (not counted yet); False: over the budget."""
        s = int(self.ctx.slots[p])
        if self.chunking:
            self.items.append(s)  # never over budget: finalize fits the chunks
            return True
        c = self.ctx.cols
        tokens = int(c["num_tokens"][s]) + int(c["num_draft_tokens"][s])
        if self.max_ctx is not None and tokens > self.max_ctx:
            raise _core.SchedulingError(context_too_long(int(c["request_id"][s]), tokens, self.max_ctx))
        if self._over(tokens):
            return False
        self.plain.append(s)
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
        self.gens.append(s)
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

    # ------------------------------------------------------------------ many requests (slot arrays)
    def counted(self, pos: np.ndarray) -> Optional[np.ndarray]:
        """bool per list position of `pos`: not in flight (None: all of them)."""
        return None if self.inflight is None else ~self.inflight.take(pos)

    def generation_tokens(self, slots: np.ndarray):
        """(beam width, budget tokens per generation: an int when all are equal) of the generations
        `slots`, or None when their beam widths differ (the per-request walk passes some over). A
        column no request of the table uses (its tally is 0) is not read."""
        c, b = self.ctx.cols, 1
        if self.tallies[_WIDE_BEAMS] and slots.size:
            beams = c["beam_width_by_iter"].take(slots)
            b = int(beams[0])
            if self.beam not in (0, b) or np.count_nonzero(beams != b):
                return None
        if not self.tallies[_WITH_DRAFTS]:
            return b, b
        return b, c["num_draft_tokens"].take(slots).astype(np.int64) + b

    def walk(self, n: int, tokens, counted: Optional[np.ndarray]):
        """How many of n requests in order (budgeted `tokens` each, counted where `counted`) the
        tracker takes, and why it stops: (k, OVER_BUDGET: request k is over the budget; FULL:
        request k - 1 filled the batch; CONTINUE: all n). Records nothing."""
        left = None if self.budget is None else self.budget - self.used
        room = self.limit - self.size
        if counted is None and isinstance(tokens, int):  # equal tokens, all counted: arithmetic
            k_over = n if left is None or tokens == 0 else min(n, left // tokens)
            k_full = room - 1 if room <= n else n
        else:
            tok = np.broadcast_to(np.asarray(tokens, dtype=np.int64), (n,))
            if counted is not None:
                tok = tok * counted
            k_over = n if left is None else int(tok.cumsum().searchsorted(left, side="right"))
            k_full = (room - 1 if room <= n else n) if counted is None else int(counted.cumsum().searchsorted(room))
        if k_full < k_over:
            return k_full + 1, FULL
        if k_over < n:
            return k_over, OVER_BUDGET
        return n, CONTINUE

    def take_all_generations(self, slots: np.ndarray) -> bool:
        """Records the counted generations `slots` when the tracker takes every one without stopping
        (FULL after the last one is a stop); False, nothing recorded, otherwise."""
        n = slots.size
        if not (self.tallies[_WIDE_BEAMS] or self.tallies[_WITH_DRAFTS]):  # one token each: no column read
            if (self.budget is not None and self.used + n > self.budget) or self.size + n >= self.limit:
                return False
            if n:  # recorded and counted (the batch is not full: checked above)
                self.beam = 1
                self.gens.append(slots)
                self.used += n
                self.size += n
                self.num_fitting += n
            return True
        per = self.generation_tokens(slots)
        if per is None or self.walk(n, per[1], None)[1] != CONTINUE:
            return False
        self.add_generations(slots, per[0], per[1])
        return True

    def add_generations(self, slots: np.ndarray, beam: int, tokens) -> None:
        """Records the counted generations `slots` (a prefix `walk` allowed) of beam width `beam`."""
        if slots.size == 0:
            return
        self.beam = beam
        self.gens.append(slots)
        self.used += tokens * slots.size if isinstance(tokens, int) else int(tokens.sum())
        self._count(int(slots.size))

    def context_tokens(self, slots: np.ndarray, counted: Optional[np.ndarray]):
        """Budget tokens of the contexts `slots` (0 where not counted); None with chunking, where
        a context is never over budget."""
        if self.chunking:
            return None
        c = self.ctx.cols
        tok = c["num_tokens"].take(slots).astype(np.int64)
        if self.tallies[_WITH_DRAFTS]:
            tok += c["num_draft_tokens"].take(slots)
        return tok if counted is None else tok * counted

    def first_too_long(self, tokens) -> int:
        """The first index of a context longer than max_context_length (INT32_MAX: none)."""
        if tokens is None or self.max_ctx is None or tokens.size == 0:
            return INT32_MAX
        bad = tokens > self.max_ctx
        return int(bad.argmax()) if bad.any() else INT32_MAX

    def fail_too_long(self, slot: int, tokens: int) -> None:
        rid = int(self.ctx.cols["request_id"][slot])
        raise _core.SchedulingError(context_too_long(rid, tokens, self.max_ctx))

    def add_contexts(self, slots: np.ndarray, tokens) -> None:
        """Records the counted contexts `slots` (budget `tokens`: None with chunking)."""
        if slots.size == 0:
            return
        (self.items if self.chunking else self.plain).append(slots)
        if tokens is not None:
            self.used += int(tokens.sum())
        self._count(int(slots.size))

    def contexts_prefix(self, slots: np.ndarray, k_cap: int, counted: Optional[np.ndarray]):
        """try_add_context over the contexts `slots` whose capacity checks (count, blocks) pass for
        the first `k_cap`: records the counted ones the loop admits; (how many it admits, whether
        it stopped before the end). A too-long context the loop reaches fails the step."""
        n = slots.size
        if self.chunking and counted is None:  # chunked contexts take no tokens here: only the count stops them
            k = min(n, k_cap, self.limit - self.size)
            if k > 0:  # add_contexts, inline: the serving step's path
                self.items.append(slots[:k] if k < n else slots)
                self._count(k)
            return k, k < n or self.full
        tokens = self.context_tokens(slots, counted)
        k, why = self.walk(n, 0 if tokens is None else tokens, counted)
        bad = self.first_too_long(tokens)
        if bad < k_cap and bad <= (k if why == OVER_BUDGET else k - 1):
            self.fail_too_long(int(slots[bad]), int(tokens[bad]))
        k = min(k, k_cap)
        taken = slots[:k] if counted is None else slots[:k][counted[:k]]
        self.add_contexts(taken, None if tokens is None else tokens[:k])
        return k, k < n or self.full

    # ------------------------------------------------------------------ the end of the step
    def finalize(self):
        """(context slots, generation slots, num_fitting): chunk sizes committed, LoRA order."""
        micro, gens, items = self.micro, self.gens, self.items
        generation = gens[0] if len(gens) == 1 and not isinstance(gens[0], int) else _concat(gens)
        if self.tallies[_WITH_LORA]:
            generation = micro._sort_lora(generation)
        if not (self.plain or items):  # a decode step: nothing to chunk or commit
            return EMPTY, generation, self.num_fitting
        if not self.chunking:
            return micro._sort_lora(_concat(self.plain)), generation, self.num_fitting
        items = items[0] if len(items) == 1 and not isinstance(items[0], int) else _concat(items)
        if micro.max_ctx is None and self.budget is not None and not self.tallies[_WITH_DRAFTS]:
            c = self.ctx.cols
            remaining = c["prompt_len"].take(items) - c["context_current_position"].take(items)
            if items.size < FEW:  # the usual handful of new contexts, all of which fit whole
                w = remaining.tolist()
                if sum(w) <= self.budget - self.used:
                    micro._table.set_context_chunk_sizes(items, remaining, None)
                    return micro._sort_lora(items if 0 not in w else items[remaining > 0]), generation, self.num_fitting
            elif micro.chunking_policy == chunking.FIRST_COME_FIRST_SERVED:
                # Many waiting contexts (few take the plain loops of micro._chunk faster); the
                # budget's limit is never tighter than the capacity's.
                context, last = micro._first_come_first_served(items, remaining, self.budget - self.used)
                return micro._sort(context, last is not None, last), generation, self.num_fitting
        d = self.ctx.cols["num_draft_tokens"].take(items) if self.tallies[_WITH_DRAFTS] else None
        context, last = micro._chunk(items, d, self.used, self.budget)
        return micro._sort(context, last is not None, last), generation, self.num_fitting


def _concat(parts: list) -> np.ndarray:
    if not parts:
        return EMPTY
    if len(parts) == 1 and not isinstance(parts[0], int):
        return parts[0]
    return np.concatenate([np.atleast_1d(np.asarray(p, dtype=np.int32)) for p in parts])


# ---------------------------------------------------------------------- walks shared by the policies

def _walk_generations(tb: TokenBudget, pos: np.ndarray):
    """try_add_generation over the running generations at list positions `pos`, in order: (how
    many the capacity loop takes, why it stops: OVER_BUDGET, FULL or CONTINUE)."""
    slots = tb.ctx.slots.take(pos)
    per = tb.generation_tokens(slots)
    if per is None:  # beam widths differ: some are passed over, one by one
        for k, p in enumerate(pos.tolist()):
            rc = tb.try_add_generation(p)
            if rc != CONTINUE:
                return (k, OVER_BUDGET) if rc == OVER_BUDGET else (k + 1, FULL)
        return pos.size, CONTINUE
    counted = tb.counted(pos)
    k, why = tb.walk(pos.size, per[1], counted)
    tokens = per[1] if isinstance(per[1], int) else per[1][:k]
    if counted is not None:
        m = counted[:k]
        tb.add_generations(slots[:k][m], per[0], tokens if isinstance(tokens, int) else tokens[m])
    else:
        tb.add_generations(slots[:k], per[0], tokens)
    return k, why


def _walk_any(tb: TokenBudget, cand: np.ndarray) -> int:
    """try_add over the list positions `cand` in order: how many the capacity loop takes before
    the tracker stops it (a request the tracker passes over is still taken)."""
    ctx = tb.ctx
    st, slots = ctx.state.take(cand), ctx.slots.take(cand)
    is_ctx = st == CONTEXT_INIT  # exact, as TensorRT-LLM's tracker
    is_gen = (st > CONTEXT_INIT) & (st < GEN_TO_COMPLETE)
    if tb.chunking and tb.inflight is None and not (tb.tallies[_WIDE_BEAMS] or tb.tallies[_WITH_DRAFTS]):
        # One token per generation, none per context (chunked in finalize): all are taken when the
        # generations fit the budget and the counted requests leave the batch short of full.
        gens, contexts = slots[is_gen], slots[is_ctx]
        if ((tb.budget is None or tb.used + gens.size <= tb.budget)
                and tb.size + gens.size + contexts.size < tb.limit):
            tb.add_generations(gens, 1, 1)
            tb.add_contexts(contexts, None)
            return cand.size
    per = tb.generation_tokens(slots[is_gen])
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
    ctx_tok = tb.context_tokens(slots[is_ctx], None)
    if ctx_tok is not None:
        tokens[is_ctx] = ctx_tok
    tokens *= counted
    k, why = tb.walk(cand.size, tokens, counted)
    bad = tb.first_too_long(np.where(is_ctx, tokens, 0)) if ctx_tok is not None else INT32_MAX
    if bad < k or (bad == k and why == OVER_BUDGET):
        tb.fail_too_long(int(slots[bad]), int(tokens[bad]))
    g, c = (is_gen & counted)[:k], (is_ctx & counted)[:k]
    tb.add_generations(slots[:k][g], per[0], tokens[:k][g])
    tb.add_contexts(slots[:k][c], None if ctx_tok is None else tokens[:k][c])
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
        if _takes_all(ctx, tb):
            return slice(0, n), EMPTY
        return slice(0, _walk_any(tb, np.arange(n))), EMPTY
    return _max_utilization_loop(ctx, tb, free)


def _takes_all(ctx: CapacityContext, tb: TokenBudget) -> bool:
    """The serving step in one check: running generations and CONTEXT_INIT requests, none in
    flight, whose tokens all fit the budget and whose count stays within the batch size (a batch
    filled by the last request is the same). Records them all; False (nothing recorded) otherwise."""
    sp = ctx.split
    if tb.inflight is not None or ctx.slots.size > tb.limit:
        return False
    others, os = sp.other_slots(), sp.other_state
    if os.size and not (os.tolist().count(CONTEXT_INIT) == os.size if os.size < FEW else (os == CONTEXT_INIT).all()):
        return False
    gens = sp.gens
    if tb.chunking and not (tb.tallies[_WIDE_BEAMS] or tb.tallies[_WITH_DRAFTS]):
        # One token per generation; chunked contexts take theirs in finalize.
        if tb.budget is not None and gens.size > tb.budget:
            return False
        if gens.size:
            tb.beam = 1
            tb.gens.append(gens)
            tb.used += gens.size
        if others.size:
            tb.items.append(others)
        tb._count(gens.size + others.size)
        return True
    per = tb.generation_tokens(gens)
    if per is None:
        return False
    gen_tokens = per[1] * sp.gens.size if isinstance(per[1], int) else int(per[1].sum())
    ctx_tokens = tb.context_tokens(others, None)
    total = gen_tokens + (0 if ctx_tokens is None else int(ctx_tokens.sum()))
    if (tb.budget is not None and total > tb.budget) or tb.first_too_long(ctx_tokens) != INT32_MAX:
        return False
    tb.add_generations(sp.gens, per[0], per[1])
    tb.add_contexts(others, ctx_tokens)
    return True


def _max_utilization_loop(ctx: CapacityContext, tb: TokenBudget, free: int):
    """The loop as C++ runs it, over arrays asked for in one call each (pauses: one call each).
    Without PEFT pages, the requests tried in order whose blocks fit (skip keys asked in windows,
    policies/max_utilization.py) go to the tracker in one walk; the loop goes on one request at a
    time only from the first whose blocks do not fit, where pausing starts."""
    n = ctx.slots.size
    gate = ctx.can_be_scheduled_with_disagg_exception()
    gated = gate.nonzero()[0]
    need = np.zeros(n, dtype=np.int64)
    need[gated] = ctx.kv.get_needed_blocks_one_step_batch(ctx.slots.take(gated), ctx.two_steps_look_ahead)
    pages = np.zeros(n, dtype=np.int64)
    if ctx.peft is not None:
        pages[gated] = ctx.pages(gated)
    skipper = make_skipper(ctx, _MAX_UTILIZATION_KEY_CALLS - (ctx.peft is not None))
    scheduled, blocks, i = [], 0, 0
    if ctx.peft is None:
        try_pos, (f, total, _) = tried_in_order(ctx, skipper, gated, need, pages, free)
        k = _walk_any(tb, try_pos[:f])
        if k < f or tb.full or f == try_pos.size:  # the tracker or the list ends the loop first
            return try_pos[:k], try_pos[:0]
        scheduled, blocks, i = try_pos[:f].tolist(), int(total[f - 1]) if f else 0, int(try_pos[f])
    st = ctx.state
    started = ctx.can_be_scheduled() & ((is_context_init(st) & ~ctx.first_chunk) | is_generation_in_progress(st))
    lora = ctx.lora.tolist() if ctx.peft is not None else None
    gate_l, need_l, pages_l = gate.tolist(), need.tolist(), pages.tolist()
    max_pages = ctx.max_device_pages
    paused, seen = [], set()
    used_pages, end = 0, n
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
    n, cap = ctx.slots.size, ctx.max_num_requests
    if ctx.split.other.size == 0:
        # Only running generations (the exact state): pass 1 alone, a prefix of the list.
        m = min(n, cap)
        per = tb.generation_tokens(ctx.slots[:m]) if tb.inflight is None else None
        if per is None:
            return slice(0, _walk_generations(tb, np.arange(m))[0]), EMPTY
        k = tb.walk(m, per[1], None)[0]
        tb.add_generations(ctx.slots[:k], per[0], per[1] if isinstance(per[1], int) else per[1][:k])
        return slice(0, k), EMPTY
    if ctx.plain_split and ctx.cross_kv is None and tb.inflight is None:
        fitting = _no_evict_split(ctx, tb, static_batch)
        if fitting is not None:
            return fitting, EMPTY
    return _no_evict_positions(ctx, tb, static_batch), EMPTY


def schedule_static_batch(ctx: CapacityContext, tb: TokenBudget):
    return schedule_guaranteed_no_evict(ctx, tb, static_batch=True)


def _no_evict_split(ctx: CapacityContext, tb: TokenBudget, static_batch: bool):
    """The serving step: running generations (the exact state) and waiting contexts, no PEFT, no
    cross cache, nothing in flight. Pass 1 takes the generations as a block when the tracker takes
    them all; pass 2 runs over the contexts only. Returns the fitting list as a Split or a prefix
    slice, or None (nothing recorded) when another state is among the others or pass 1 stops early."""
    sp = ctx.split
    ignored, n_waiting, n_gen_other, n_other = ctx.kind_counts
    if n_gen_other or n_other:
        return None  # GENERATION_TO_COMPLETE & co. among the others, or disagg: the array path
    gens = sp.gens
    n_gen = gens.size
    if n_gen >= ctx.max_num_requests or not tb.take_all_generations(gens):
        return None
    if n_waiting == 0 or (static_batch and n_gen):
        return Split(gens, NO_POSITIONS, EMPTY, gens=gens)
    others, o_state = sp.other_slots(), sp.other_state
    kv = ctx.kv
    room = ctx.max_num_requests - n_gen
    if not ctx.reuse or static_batch:
        # Every waiting context in list order: one blocks prefix, then the tracker. When the others
        # are all waiting contexts, one sum over the list (generations and contexts) says whether
        # they all fit, the usual case; otherwise their own answers find where admission stops.
        if not ignored:
            waiting, total = others, kv.get_remaining_blocks_to_completion_sum(ctx.slots)
            if total <= ctx.free_blocks():
                k_cap = min(others.size, room)
            else:
                need = kv.get_remaining_blocks_to_completion_batch(others)
                k_cap = min(prefix_within(need, ctx.free_blocks() - total + int(need.sum())), room)
        else:
            avail = ctx.free_blocks() - (kv.get_remaining_blocks_to_completion_sum(gens) if n_gen else 0)
            waiting = others[ctx.kinds.of(o_state) == CONTEXT]
            k_cap = min(prefix_within(kv.get_remaining_blocks_to_completion_batch(waiting), avail), room)
        k = tb.contexts_prefix(waiting, k_cap, None)[0]
        if not ignored and sp.tail:  # the generations, then the first k contexts: a prefix of the list
            return slice(0, n_gen + k)
        contexts = waiting[:k]
    else:
        contexts = _no_evict_split_reusing(ctx, tb, gens, others, o_state, room, ignored)
    return Split(np.concatenate((gens, contexts)) if contexts.size else gens, NO_POSITIONS, EMPTY)


def _no_evict_split_reusing(ctx: CapacityContext, tb: TokenBudget, gens, others, o_state, room: int,
                            ignored: int) -> np.ndarray:
    """Pass 2 of `_no_evict_split` with reuse skipping (policies/reuse_skipping.py): the admitted
    contexts need not be a prefix. The skipper sees only the others: every context in progress
    among them claims its key; keys are asked for in windows, as far as admission gets."""
    c = ctx.cols
    first = c["context_current_position"].take(others) == c["prepopulated_prompt_len"].take(others)
    skipper = ReuseSkipper(ctx.kv, others, is_context_init(o_state), first, _NO_EVICT_SPLIT_KEY_CALLS)
    waiting = np.arange(others.size) if not ignored else (ctx.kinds.of(o_state) == CONTEXT).nonzero()[0]
    rem = ctx.kv.get_remaining_blocks_to_completion_batch(np.concatenate((gens, others)))  # one question for all
    avail = ctx.free_blocks() - int(rem[:gens.size].sum())
    need = rem[gens.size:].take(waiting)  # per waiting context
    taken = []
    for part in skipper.windows(np.arange(waiting.size), min(prefix_within(need, avail), room) + 1):
        part = part[~skipper.skip_flags(waiting.take(part))]
        k_cap = min(prefix_within(need.take(part), avail), room)
        k, stopped = tb.contexts_prefix(others.take(waiting.take(part)), k_cap, None)
        taken.append(part[:k])
        avail -= int(need.take(part[:k]).sum())
        room -= k
        if stopped:
            break
    return others.take(waiting.take(np.concatenate(taken) if len(taken) > 1 else taken[0]))


def _no_evict_positions(ctx: CapacityContext, tb: TokenBudget, static_batch: bool) -> np.ndarray:
    """The general path over list positions: disagg requests, requests in flight, other states,
    a cross cache, PEFT pages, a stop inside pass 1."""
    st, cap = ctx.state, ctx.max_num_requests
    gate = ctx.can_be_scheduled_with_disagg_exception()
    is_gen = gate & (st == GEN_IN_PROGRESS)  # the exact state, as TensorRT-LLM's fused loop
    gens = is_gen.nonzero()[0][:cap]
    k, why = _walk_generations(tb, gens)
    admitted = gens[:k]
    if tb.full or k >= cap or (static_batch and k):
        return admitted
    pending = gate & ~is_gen
    if why == OVER_BUDGET:
        pending[gens[k]:] = False  # requests after the break are never classified
    disagg = (pending & (st == DISAGG_GEN_INIT)).nonzero()[0]
    # Other states left in pass 2 only meet the count check, which none of them changes: dropped.
    contexts = (pending & is_context_init(st)).nonzero()[0]
    if disagg.size == 0 and contexts.size == 0:
        return admitted
    state = _Pass2(ctx, tb, admitted)
    taken = [admitted, state.run(disagg, None)]
    skipper = make_skipper(ctx, _NO_EVICT_KEY_CALLS - (ctx.cross_kv is not None) - (ctx.peft is not None),
                           enabled=not static_batch)
    if not skipper.enabled:
        taken.append(state.run(contexts, None))
    else:
        reach = min(prefix_within(state.need.take(contexts), state.avail), state.room) + 1
        for part in skipper.windows(contexts, reach):
            taken.append(state.run(part, skipper.skip_flags(part)))
            if state.stopped:
                break
    return np.concatenate(taken)


class _Pass2:
    """What GUARANTEED_NO_EVICT's pass 2 has left (blocks of both caches, pages, the count) as it
    admits list positions: disagg-generation-init requests (blocks and pages only: the tracker
    passes them over), then contexts (the tracker too)."""

    def __init__(self, ctx: CapacityContext, tb: TokenBudget, admitted: np.ndarray):
        self.ctx, self.tb = ctx, tb
        kv, cross = ctx.kv, ctx.cross_kv
        # One array per cache for the whole list: the fewest calls with every feature on.
        self.need = kv.get_remaining_blocks_to_completion_batch(ctx.slots).astype(np.int64)
        self.avail = ctx.free_blocks() - int(self.need.take(admitted).sum())
        self.need_c, self.avail_c = None, 0
        if cross is not None:
            self.need_c = cross.get_remaining_blocks_to_completion_batch(ctx.slots).astype(np.int64)
            self.avail_c = ctx.free_blocks(cross=True) - int(self.need_c.take(admitted).sum())
        self.pages, self.avail_pages, self.seen = None, INT32_MAX, set()
        if ctx.peft is not None:
            self.pages = ctx.pages(np.arange(ctx.slots.size))
            self.avail_pages = ctx.max_device_pages
            for task, p in zip(ctx.lora.take(admitted).tolist(), self.pages.take(admitted).tolist()):
                if task >= 0 and task not in self.seen:
                    self.seen.add(task)
                    self.avail_pages -= p
        self.room = ctx.max_num_requests - admitted.size
        self.stopped = False

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
        k = min(prefix_within(self.need.take(order), self.avail), self.room)  # count, then blocks
        if self.need_c is not None:
            k = min(k, prefix_within(self.need_c.take(order), self.avail_c))
        if self.ctx.state[order[0]] != DISAGG_GEN_INIT:  # contexts meet the tracker too
            k, self.stopped = self.tb.contexts_prefix(self.ctx.slots.take(order), k, self.tb.counted(order))
        else:
            self.stopped = k < order.size
        taken = order[:k]
        self.avail -= int(self.need.take(taken).sum())
        if self.need_c is not None:
            self.avail_c -= int(self.need_c.take(taken).sum())
        self.room -= k
        return taken

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
