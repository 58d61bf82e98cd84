"""tllm_sched/micro_batch_scheduler.py: batch size, token budget and chunked prefill, batched.

C++ twin: ext/micro_batch_scheduler.cpp. Mirrors TensorRT-LLM's MicroBatchScheduler
(scheduler.md §3). The walk over the fitting list is a cumulative sum of tokens with two
first-break searches (token budget, batch size); beam-width mismatches, rare, take a scalar
walk. Decisions are committed with at most two batched calls (chunk sizes, draft discards).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from tllm_sched import _core
from tllm_sched.policies import chunking
from tllm_sched.policies.common import (
    CONTEXT_INIT,
    DISAGG_CTX_INIT_AND_TRANS,
    DISAGG_GEN_INIT,
    DISAGG_GEN_TRANS_COMPLETE,
    ENCODER_INIT,
    GEN_TO_COMPLETE,
)

_EMPTY = np.zeros(0, dtype=np.int32)


def context_too_long(request_id: int, tokens: int, max_ctx: int) -> str:
    """The run-failure message, worded as the C++ scheduler words it."""
    return (f"request {request_id}: context of {tokens} tokens exceeds max_context_length {max_ctx} "
            "and chunking is disabled")


class PyMicroBatchScheduler:
    """Micro-batch scheduling over request slots, reading columns through zero-copy views."""

    def __init__(self, cols: dict, table, chunking_policy: Optional[str], chunk_unit_size: Optional[int],
                 max_context_length: Optional[int], no_schedule_until: int = CONTEXT_INIT,
                 no_schedule_after: int = GEN_TO_COMPLETE):
        self._c = cols  # zero-copy column views of the table, built once
        self._table = table  # RequestTable (or a counting proxy): only for commits
        self.chunking_policy = chunking_policy
        self.unit = chunk_unit_size
        self.max_ctx = max_context_length
        self.until, self.after = no_schedule_until, no_schedule_after

    def schedule(self, slots: np.ndarray, inflight_ids: Optional[np.ndarray], max_batch_size: int,
                 max_num_tokens: Optional[int]):
        """(context slots, generation slots) in output order; commits chunk sizes and discards."""
        c = self._c
        st = c["state"].take(slots)
        no_inflight = inflight_ids is None or len(inflight_ids) == 0
        if no_inflight and self._all_generation(st):
            fast = self._generations_only(slots, max_batch_size, max_num_tokens)
            if fast is not None:
                return _EMPTY, fast
        ok = (st >= self.until) & (st < self.after)
        if not no_inflight:
            ok &= ~np.isin(c["request_id"].take(slots), inflight_ids)
        s = slots
        if not ok.all():
            idx = ok.nonzero()[0]
            s, st = slots.take(idx), st.take(idx)
        # Context states (10, 11) are contiguous; encoder requests only exist in a widened window.
        is_ctx = (st >= CONTEXT_INIT) & (st <= DISAGG_CTX_INIT_AND_TRANS)
        is_enc = (st == ENCODER_INIT) if self.until <= ENCODER_INIT else None
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

    def _all_generation(self, st: np.ndarray) -> bool:
        """Every request is a schedulable generation (states 12..14 are contiguous)."""
        lo, hi = DISAGG_GEN_TRANS_COMPLETE, min(GEN_TO_COMPLETE, self.after - 1)
        return bool(st.size and self.until <= lo and st.min() >= lo and st.max() <= hi)

    def _generations_only(self, slots, max_batch_size, budget):
        """The common decode step: a token-budget prefix of equal-beam generations, or None
        when beams differ (the general walk handles the skipping)."""
        c = self._c
        beam = c["beam_width_by_iter"].take(slots)
        if beam.min() != beam.max():
            return None
        k = slots.size
        if budget is not None:
            tokens = beam.astype(np.int64) + c["num_draft_tokens"].take(slots)
            k = int(tokens.cumsum().searchsorted(budget, side="right"))  # totals only grow
        return self._sort_lora(slots[: min(k, max_batch_size)])

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
        c = self._c
        s_t, gen_t, ch_t = s[taken], is_gen[taken], chunked[taken]
        generation = s_t[gen_t]
        plain_ctx = s_t[~gen_t & ~ch_t]
        items = s_t[ch_t]
        chunks = discard = None
        chunks_present = False
        if items.size:
            remaining = c["prompt_len"].take(items) - c["context_current_position"].take(items)
            d = draft[taken][ch_t]
            want = remaining + d
            all_fit = True
            if self.max_ctx is not None and (want > self.max_ctx).any():
                all_fit = False
            want_total = int(np.minimum(want, self.max_ctx).sum() if self.max_ctx is not None else want.sum())
            used = int(tokens[taken].sum())  # chunked contexts carry 0: they are budgeted after the walk
            if budget is not None and want_total > budget - used:
                all_fit = False
            chunks, discard = remaining, np.zeros(items.size, dtype=np.int64)
            if not all_fit:
                cap = None if budget is None else budget - used
                if items.size >= chunking.VECTOR_MIN_ITEMS:
                    chunks, discard = chunking.set_ctx_requests_chunk_size_vec(
                        remaining, d, self.chunking_policy, cap, self.unit, self.max_ctx)
                else:
                    chunks, discard = chunking.set_ctx_requests_chunk_size(
                        remaining.tolist(), d.tolist(), self.chunking_policy, cap, self.unit, self.max_ctx)
            chunks_present = not all_fit
            self.commit(items, chunks, discard)
        context = plain_ctx if items.size == 0 else np.concatenate([plain_ctx, items[np.asarray(chunks) > 0]])
        return self._sort(context, chunks_present), self._sort_lora(generation)

    def commit(self, items: np.ndarray, chunks, discard) -> None:
        """Writes chunk sizes (clamping setter) and draft discards: at most two batched calls."""
        self._table.set_context_chunk_sizes(items, np.asarray(chunks, dtype=np.int32))
        d = np.asarray(discard, dtype=np.int32)
        if d.any():
            self._table.discard_draft_tokens(items[d > 0], d[d > 0])

    def _sort_lora(self, s):
        if s.size < 2:
            return s
        lora = self._c["lora_task_id"].take(s)
        if lora.max() < 0 or (lora[1:] >= lora[:-1]).all():  # already in order (e.g. no LoRA)
            return s
        return s.take(np.argsort(lora, kind="stable"))

    def _sort(self, ctx, chunks_present):
        if ctx.size < 2:
            return ctx
        if not chunks_present:
            return self._sort_lora(ctx)
        c = self._c
        st = c["state"][ctx]
        last = (st == DISAGG_GEN_INIT) | (st == DISAGG_GEN_TRANS_COMPLETE) | (
            c["context_current_position"][ctx] + c["context_chunk_size"][ctx] == c["prompt_len"][ctx])
        return ctx[np.lexsort((c["lora_task_id"][ctx], last))]  # non-last first, then by LoRA, stable
