"""tllm_sched/micro_batch_scheduler.py: batch size, token budget and chunked prefill, batched.

C++ twin: ext/micro_batch_scheduler.cpp; python-naive twin: tllm_sched/naive/micro_batch_scheduler.py.
Mirrors TensorRT-LLM's MicroBatchScheduler. The walk over the fitting list is a cumulative sum of tokens with two
first-break searches (token budget, batch size); beam-width mismatches, rare, take a scalar
walk. Given the capacity stage's Split (running generations and a few contexts), the common
step takes everything when it fits and only chunks the contexts. Decisions are committed with
one batched call (chunk sizes and draft discards).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from tllm_sched import _core
from tllm_sched.policies import chunking, common
from tllm_sched.policies.common import (
    CONTEXT_INIT,
    DISAGG_CTX_INIT_AND_TRANS,
    DISAGG_GEN_INIT,
    DISAGG_GEN_TRANS_COMPLETE,
    ENCODER_INIT,
    GEN_IN_PROGRESS,
    GEN_TO_COMPLETE,
    KindTable,
    Split,
    is_context_init,
    prefix_within,
)

_EMPTY = np.zeros(0, dtype=np.int32)
# By count n: positions n-1, 0, ..., n-2 (the last one first), a gather's index without a list.
_LAST_FIRST = [np.roll(np.arange(n, dtype=np.intp), 1) for n in range(common.FEW)]
_FIRST_FIT_HEAD = 32  # first come first served scans this many remainders in plain Python first
_OUTSIDE, _CONTEXT, _OTHER = range(3)  # kinds of a split's others
_WITH_LORA, _WITH_DRAFTS, _WIDE_BEAMS = range(3)  # RequestTable.tallies() entries


def context_too_long(request_id: int, tokens: int, max_ctx: int) -> str:
    """The run-failure message, worded as the C++ scheduler words it."""
    return (f"request {request_id}: context of {tokens} tokens exceeds max_context_length {max_ctx} "
            "and chunking is disabled")


class PyMicroBatchScheduler:
    """Micro-batch scheduling over request slots, reading columns through zero-copy views."""

    def __init__(self, cols: dict, tallies: np.ndarray, table, chunking_policy: Optional[str], chunk_unit_size: Optional[int],
                 max_context_length: Optional[int], no_schedule_until_state: int = CONTEXT_INIT,
                 no_schedule_after_state: int = GEN_TO_COMPLETE):
        self._c = cols  # zero-copy column views of the table, built once
        self._tallies = tallies  # zero-copy view of the table's tallies (RequestTable.tallies)
        self._table = table  # RequestTable (or a counting proxy): only for commits
        self.chunking_policy = chunking_policy
        # The policy's scalar chunk sizes (no draft tokens), resolved once.
        self._chunk_sizes = self._chunk_sizes_vec = None
        if chunking_policy is not None:
            self._chunk_sizes, self._chunk_sizes_vec = chunking.policy_forms(chunking_policy)
        self.unit = chunk_unit_size
        self.max_ctx = max_context_length
        self.no_schedule_until_state, self.no_schedule_after_state = no_schedule_until_state, no_schedule_after_state
        # The split path needs contexts and running generations inside the window, encoders not.
        self._split_window = (ENCODER_INIT < no_schedule_until_state <= CONTEXT_INIT
                              and no_schedule_after_state > GEN_IN_PROGRESS)
        self._kinds = KindTable(self._kind_of, 3)
        # _chunk_few's chunk sizes (copied by the setter), as a view per count: no array made in a step.
        few_chunks = np.zeros(common.FEW, dtype=np.int32)
        self._few_chunks = [few_chunks[:n] for n in range(common.FEW)]
        # Chunk sizes the setter clamps to each remainder (every context whole), by count. Writable
        # though never written: numpy refuses a read-only array's unversioned DLPack export and the
        # binding's retry costs a raised exception every step.
        whole = np.full(common.FEW, np.iinfo(np.int32).max, dtype=np.int32)
        self._whole_of = [whole[:n] for n in range(common.FEW)]
        # Scalar reads and writes of a few values go through memoryviews: Python's own code, where
        # numpy's scalar paths (item, tolist, setitem) run cache-cold on a cold step.
        self._few_chunks_mv = memoryview(few_chunks)
        self._tallies_mv = memoryview(tallies)
        self._prompt_mv = memoryview(cols["prompt_len"])
        self._pos_mv = memoryview(cols["context_current_position"])

    def _kind_of(self, st: int) -> int:
        """Kind of a split's other: outside the window, a context, or anything else."""
        if not self.no_schedule_until_state <= st < self.no_schedule_after_state:
            return _OUTSIDE
        return _CONTEXT if is_context_init(st) else _OTHER

    def schedule(self, slots: np.ndarray, inflight_ids: Optional[np.ndarray], max_batch_size: int,
                 max_num_tokens: Optional[int], split: Optional[Split] = None):
        """(context slots, generation slots) in output order; commits chunk sizes and discards.
        `split`, if given, is the Split of `slots` (the capacity stage's, saving a recount)."""
        c = self._c
        no_inflight = inflight_ids is None or len(inflight_ids) == 0
        st = None
        if no_inflight and self._split_window:
            if split is None:
                st = c["state"].take(slots)
                split = Split.of(slots, st)
            out = self._schedule_split(split, max_batch_size, max_num_tokens)
            if out is not None:
                return out
        if st is None:
            st = c["state"].take(slots)
        ok = (st >= self.no_schedule_until_state) & (st < self.no_schedule_after_state)
        if not no_inflight:
            ok &= ~np.isin(c["request_id"].take(slots), inflight_ids)
        s = slots
        if not ok.all():
            idx = ok.nonzero()[0]
            s, st = slots.take(idx), st.take(idx)
        # Context states (10, 11) are contiguous; encoder requests only exist in a widened window.
        is_ctx = (st >= CONTEXT_INIT) & (st <= DISAGG_CTX_INIT_AND_TRANS)
        is_enc = (st == ENCODER_INIT) if self.no_schedule_until_state <= ENCODER_INIT else None
        is_ctx_like = is_ctx if is_enc is None else (is_ctx | is_enc)
        is_gen = ~is_ctx_like
        draft = c["num_draft_tokens"].take(s)
        beam = c["beam_width_by_iter"].take(s)
        chunked = is_ctx if self.chunking_policy is not None else None
        # Tokens each request adds to the budget; chunked contexts add theirs after the walk.
        tokens = np.where(is_gen, beam + draft, 0 if chunked is not None else c["num_tokens"].take(s) + draft)
        if is_enc is not None:
            tokens = np.where(is_enc, c["encoder_output_len"].take(s), tokens)
        if chunked is None:
            chunked = np.zeros(s.size, dtype=bool)
        gen_beams = beam[is_gen]
        if gen_beams.size and gen_beams.min() != gen_beams.max():
            taken = self._walk_scalar(s, is_gen, chunked, tokens, beam, max_batch_size, max_num_tokens, is_ctx_like)
        else:
            taken = self._walk(s, chunked, tokens, max_batch_size, max_num_tokens, is_ctx_like)
        return self._finish(s, taken, is_gen, chunked, draft, tokens, max_num_tokens)

    def _schedule_split(self, sp: Split, max_batch_size: int, budget: Optional[int]):
        """The serving steady state: running generations (equal beams) and a few contexts, the
        whole list within the batch size and the token budget, so the walk takes everything and
        only the contexts need work. None when that does not hold (the general walk decides).
        Few frames and numpy calls: a cold step pays for each (the tallies are read once, as ints)."""
        with_lora, with_drafts, wide_beams = self._tallies_mv.tolist()
        gens = sp.gens
        # (beam width, budget tokens, draft counts or None): one token each without beams or drafts.
        per_gen = self._generation_tokens(gens) if with_drafts or wide_beams else (1, gens.size, None)
        if per_gen is None:
            return None  # a beam-width mismatch: the scalar walk skips requests
        items = sp.contexts
        if (items if items is not None else sp.other_state).size == 0:
            # The decode step: the token-budget prefix of the generations.
            b, total, draft = per_gen
            k = gens.size
            if budget is not None and total > budget:
                if draft is not None:
                    k = int((draft.astype(np.int64) + b).cumsum().searchsorted(budget, side="right"))  # totals only grow
                else:
                    k = max(0, budget // b) if b > 0 else 0
            gen = gens if k <= max_batch_size and k == gens.size else gens[:min(k, max_batch_size)]
            return _EMPTY, (self._sort_lora(gen) if with_lora else gen)
        if items is None:
            os = sp.other_state
            outside, _, n_other = self._kinds.count(os)
            if n_other:
                return None  # another schedulable state (a disagg generation) among the others
            items = sp.other_slots() if not outside else sp.slots.take(sp.other[self._kinds.of(os) == _CONTEXT])
        if gens.size + items.size > max_batch_size:
            return None
        used = per_gen[1]
        d = self._c["num_draft_tokens"].take(items) if with_drafts else None
        if self.chunking_policy is None:
            tokens = self._c["num_tokens"].take(items) + (0 if d is None else d)
            used += int(tokens.sum())
            if budget is not None and used > budget:
                return None
            self._check_context_length(items, tokens, np.arange(items.size))
            return self._sort_lora(items), self._sort_lora(gens)
        if budget is not None and used > budget:
            return None
        # _chunk's dispatch for the usual handful of contexts without drafts, a frame fewer.
        if d is None and items.size < common.FEW:
            context, last = self._chunk_few(items, used, budget)
        else:
            context, last = self._chunk(items, d, used, budget)
        # Flags as a list come with the contexts in output order already; LoRA order needs _sort.
        if context.size > 1 and (with_lora or isinstance(last, np.ndarray)):
            context = self._sort(context, last is not None, last)
        return context, (self._sort_lora(gens) if with_lora else gens)

    def _generation_tokens(self, gens):
        """(beam width, budget tokens, draft counts or None when none) of the generations
        `gens`, or None when their beam widths differ. A column no request of the table uses
        (its tally is 0) is not read."""
        b = 1
        if gens.size and self._tallies[_WIDE_BEAMS]:
            beam = self._c["beam_width_by_iter"].take(gens)
            b = int(beam[0])
            if np.count_nonzero(beam != b):
                return None
        if not (gens.size and self._tallies[_WITH_DRAFTS]):
            return b, b * gens.size, None
        draft = self._c["num_draft_tokens"].take(gens)
        if not np.count_nonzero(draft):
            return b, b * gens.size, None
        return b, b * gens.size + int(draft.sum()), draft

    def _check_context_length(self, s, tokens, positions):
        if self.max_ctx is None or positions.size == 0:
            return
        too_long = positions[tokens[positions] > self.max_ctx]
        if too_long.size:
            k = int(too_long[0])
            raise _core.SchedulingError(context_too_long(int(self._c["request_id"][s[k]]), int(tokens[k]), self.max_ctx))

    def _walk(self, s, chunked, tokens, max_batch_size, budget, is_ctx_like):
        """The prefix taken: up to the first budget overflow (not taken) or the batch-size limit.
        Chunked contexts carry 0 tokens here, so the running total only grows and the first
        overflow is always a budgeted request."""
        n = tokens.size
        stop = n
        if budget is not None and n:
            stop = int(tokens.cumsum().searchsorted(budget, side="right"))
        if self.max_ctx is not None:
            reached = min(stop + 1, n, max_batch_size)  # the overflowing request is checked, not taken
            self._check_context_length(s, tokens, (is_ctx_like[:reached] & ~chunked[:reached]).nonzero()[0])
        return slice(0, min(stop, max_batch_size))

    def _walk_scalar(self, s, is_gen, chunked, tokens, beam, max_batch_size, budget, is_ctx_like):
        taken, used, sched_beam = [], 0, 0
        for k in range(tokens.size):
            t = int(tokens[k])
            if not chunked[k]:
                if is_ctx_like[k] and self.max_ctx is not None and t > self.max_ctx:
                    self._check_context_length(s, tokens, np.array([k]))
                if budget is not None and used + t > budget:
                    break
            if is_gen[k]:
                if sched_beam == 0:
                    sched_beam = int(beam[k])
                elif sched_beam != int(beam[k]):
                    continue  # a different beam width waits and takes no batch slot
            taken.append(k)
            if not chunked[k]:
                used += t
            if len(taken) >= max_batch_size:
                break
        return np.array(taken, dtype=np.int64)

    def _finish(self, s, taken, is_gen, chunked, draft, tokens, budget):
        s_t, gen_t, ch_t = s[taken], is_gen[taken], chunked[taken]
        generation = s_t[gen_t]
        plain_ctx = s_t[~gen_t & ~ch_t]
        items = s_t[ch_t]
        if items.size == 0:
            return self._sort(plain_ctx, False), self._sort_lora(generation)
        used = int(tokens[taken].sum())  # chunked contexts carry 0: they are budgeted after the walk
        chunked_ctx, last = self._chunk(items, draft[taken][ch_t], used, budget)
        context = np.concatenate([plain_ctx, chunked_ctx])
        return self._sort(context, last is not None), self._sort_lora(generation)

    def _chunk(self, items, d, used, budget):
        """Chunk sizes of the chunked contexts `items` (draft counts `d`, None: none anywhere)
        within what the budget leaves after `used` tokens, committed. Returns the contexts that
        got a chunk and, if some chunk is partial, their last-chunk flags (else None). Flags given
        as a list come with the contexts already in output order (non-last chunks first:
        `_chunk_few`, `_first_come_first_served`); as an array, with the contexts in list order."""
        if items.size == 0:
            return items, None
        if d is None and items.size < common.FEW:
            return self._chunk_few(items, used, budget)
        c = self._c
        remaining = c["prompt_len"].take(items) - c["context_current_position"].take(items)  # int32
        if d is None:
            return self._chunk_many(items, remaining, used, budget)
        want = remaining + d
        too_long = self.max_ctx is not None and bool((want > self.max_ctx).any())
        if not too_long and (budget is None or int(want.sum()) <= budget - used):  # every remainder fits
            self.commit(items, remaining, None)
            return (items if np.count_nonzero(remaining) == items.size else items[remaining > 0]), None
        cap = None if budget is None else budget - used
        if items.size >= chunking.VECTOR_MIN_ITEMS:
            chunks, discard = chunking.set_ctx_requests_chunk_size_vec(
                remaining, d, self.chunking_policy, cap, self.unit, self.max_ctx)
        else:
            chunks, discard = chunking.set_ctx_requests_chunk_size(
                remaining.tolist(), d.tolist(), self.chunking_policy, cap, self.unit, self.max_ctx)
            chunks = np.array(chunks, dtype=np.int64)
        self.commit(items, chunks, discard)
        keep = chunks > 0
        return items[keep], (chunks == remaining)[keep]  # a chunk never exceeds the remainder

    def _chunk_few(self, items, used, budget):
        """`_chunk` for the usual handful of contexts without draft tokens: Python ints are
        cheaper than numpy calls (the first call of each array function in a step runs
        cache-cold, so the remainders are read element by element), and with no draft token there
        is nothing to discard."""
        prompt, pos = self._prompt_mv, self._pos_mv
        rem, longest, total = [], 0, 0
        for s in items.tolist():  # a loop, not a comprehension or max/sum calls: fewer cold calls
            r = prompt[s] - pos[s]
            rem.append(r)
            total += r
            if r > longest:
                longest = r
        max_ctx = self.max_ctx
        if (max_ctx is None or longest <= max_ctx) and (budget is None or total <= budget - used):
            # Every remainder fits: each takes all it has left (the setter clamps to the remainder).
            self._table.set_context_chunk_sizes(items, self._whole_of[items.size], None)
            return (items if 0 not in rem else items.take([k for k, r in enumerate(rem) if r])), None
        chunks = self._chunk_sizes(rem, None if budget is None else budget - used, self.unit, max_ctx)
        buf = self._few_chunks_mv
        partial, whole = [], []  # positions with a chunk: non-last chunks (output first), last chunks
        for k, ch in enumerate(chunks):
            buf[k] = ch
            if ch:
                (whole if ch == rem[k] else partial).append(k)  # a chunk never exceeds the remainder
        self._table.set_context_chunk_sizes(items, self._few_chunks[items.size], None)
        order = partial + whole
        last = [False] * len(partial) + [True] * len(whole)
        n = len(order)
        # Usually the first n in list order (a slice), else one gather into output order.
        if (not partial or not whole or partial[-1] < whole[0]) and (not n or order[-1] == n - 1):
            return (items if n == items.size else items[:n]), last
        if len(partial) == 1 and partial[0] == n - 1 and order[-1] == n - 2:
            # First come first served: the budget ends in the last chunk taken, which goes first.
            return items.take(_LAST_FIRST[n]), last
        return items.take(order), last

    def _chunk_many(self, items, remaining, used, budget):
        """`_chunk` for many contexts without draft tokens: the policy's array form, nothing to
        discard; first come first served without a maximum length by `_first_come_first_served`."""
        max_ctx = self.max_ctx
        if budget is not None and max_ctx is None and self.chunking_policy == chunking.FIRST_COME_FIRST_SERVED:
            return self._first_come_first_served(items, remaining, budget - used)
        if (max_ctx is None or int(remaining.max()) <= max_ctx) and (budget is None or int(remaining.sum()) <= budget - used):
            self._table.set_context_chunk_sizes(items, remaining, None)  # every remainder fits
            return (items if np.count_nonzero(remaining) == items.size else items[remaining > 0]), None
        chunks = self._chunk_sizes_vec(remaining.astype(np.int64), None if budget is None else budget - used,
                                       self.unit, max_ctx)
        self._table.set_context_chunk_sizes(items, chunks.astype(np.int32), None)
        keep = chunks.nonzero()[0]
        return items.take(keep), chunks.take(keep) == remaining.take(keep)  # a chunk never exceeds the remainder

    def _first_come_first_served(self, items, remaining, cap):
        """First come first served over many contexts without draft tokens or a maximum length,
        committed (the fused pass's finalize uses it too): whole remainders while `cap` lasts (the
        budget left usually holds a few of the many: found by a plain loop), the next one cut down
        to a unit, then the few whole remainders that fit what is left (chunking.py's policy). In
        the usual outcome, no such tail, the contexts come in output order (the one partial chunk
        first) with their last-chunk flags as a list; otherwise in list order with an array."""
        j = prefix_within(remaining, cap, _FIRST_FIT_HEAD)
        if j == items.size:  # every remainder fits whole: no partial chunk
            self._table.set_context_chunk_sizes(items, remaining, None)
            return (items if np.count_nonzero(remaining) == items.size else items[remaining > 0]), None
        chunks = np.zeros(items.size, dtype=np.int32)
        chunks[:j] = remaining[:j]
        left = cap - (int(remaining[:j].sum()) if j else 0)  # below remaining[j]
        part = left // self.unit * self.unit
        chunks[j] = part
        tail = chunking._greedy_tail(remaining, None, j + 1, left - part, chunks) != left - part
        self._table.set_context_chunk_sizes(items, chunks, None)
        if not tail and (j == 0 or remaining[:j].min() > 0):
            if not part:
                return items[:j], None
            return np.concatenate((items[j:j + 1], items[:j])), [False] + [True] * j
        keep = chunks > 0
        return items[keep], (chunks == remaining)[keep]  # a chunk never exceeds the remainder

    def commit(self, items: np.ndarray, chunks, discard) -> None:
        """Writes chunk sizes (clamping setter) and draft discards (None: no discard) in one call."""
        d = None if discard is None else np.asarray(discard, dtype=np.int32)
        if d is not None and not d.any():
            d = None
        self._table.set_context_chunk_sizes(items, np.asarray(chunks, dtype=np.int32), d)

    def _sort_lora(self, s):
        if s.size < 2 or not self._tallies[_WITH_LORA]:
            return s
        lora = self._c["lora_task_id"].take(s)
        if lora.max() < 0 or (lora[1:] >= lora[:-1]).all():  # already in order (e.g. no LoRA)
            return s
        return s.take(np.argsort(lora, kind="stable"))

    def _sort(self, ctx, chunks_present, last=None):
        """Contexts in output order: by LoRA task; with partial chunks, non-last chunks first.
        `last`: the last-chunk flags if known (else read from the committed columns)."""
        if ctx.size < 2:
            return ctx
        if not chunks_present:
            return self._sort_lora(ctx)
        c = self._c
        if last is None:
            st = c["state"][ctx]
            last = (st == DISAGG_GEN_INIT) | (st == DISAGG_GEN_TRANS_COMPLETE) | (
                c["context_current_position"][ctx] + c["context_chunk_size"][ctx] == c["prompt_len"][ctx])
        lora = c["lora_task_id"].take(ctx) if self._tallies[_WITH_LORA] else None
        if lora is None or lora.max() < 0:
            if isinstance(last, list):  # flags as a list: already in output order (_chunk)
                return ctx
            return ctx.take(np.argsort(last, kind="stable"))  # non-last first, stable
        return ctx[np.lexsort((lora, last))]  # non-last first, then by LoRA, stable
