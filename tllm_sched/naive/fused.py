"""tllm_sched/naive/fused.py: the fused single pass, per request.

Twins: ext/policies/fused.cpp, tllm_sched/policies/fused.py. Shaped like TensorRT-LLM's 2026
unified_scheduler.py: a `TokenBudgetTracker` asked request by request from inside the capacity
loops, then `finalize` (chunking, LoRA sort). MaxRequestsPolicy's and MaxUtilizationPolicy's loops
are the two-stage ones with the tracker passed in (naive/max_requests.py, naive/max_utilization.py);
GuaranteedNoEvictPolicy's fused loop is below. Every property read and cache question is a crossing, as in the other
python-naive policies. Chunk sizes are written in `finalize`, so a SchedulingError changes nothing.
"""

from __future__ import annotations

import numpy as np

from tllm_sched.naive.chunking import set_ctx_requests_chunk_size
from tllm_sched.naive.common import INT32_MAX, CapacityContext
from tllm_sched.naive.guaranteed_no_evict import admit_pending
from tllm_sched.naive.micro_batch_scheduler import _check_context_length, _sort
from tllm_sched.policies.common import CONTEXT_INIT, GEN_IN_PROGRESS, GEN_TO_COMPLETE
from tllm_sched.policies.fused import fused_max_context_length

FULL, OVER_BUDGET, CONTINUE = -1, 0, 1  # try_add_generation's answers
_ADDED, _OVER, _SKIPPED = range(3)


class TokenBudgetTracker:
    """TensorRT-LLM's TokenBudgetTracker over request handles."""

    def __init__(self, config, inflight_ids):
        self.max_batch_size = config.max_batch_size
        self.max_num_tokens = config.max_num_tokens
        self.max_context_length = fused_max_context_length(config.max_context_length, config.max_num_tokens)
        self.config = config
        self.inflight = set(np.asarray(inflight_ids).tolist()) if inflight_ids is not None else set()
        self.batch_num_tokens = self.chunked_tokens = self.req_size = self.beam = self.num_fitting = 0
        self.context, self.generation, self.to_chunk = [], [], []
        self.all_fit, self.batch_full = True, False

    def _over(self, n: int) -> bool:
        return self.max_num_tokens is not None and self.batch_num_tokens + n > self.max_num_tokens

    def _context(self, r) -> int:
        if self.config.chunking is None:
            n = r.get_num_tokens(0) + (r.num_draft_tokens if r.has_draft_tokens else 0)
            _check_context_length(r, n, self.max_context_length)
            if self._over(n):
                return _OVER
            self.context.append(r)
            self.batch_num_tokens += n
            return _ADDED
        # Tentatively the whole remainder (the last chunk, so drafts count); never over budget.
        n = r.context_remaining_length + (r.num_draft_tokens if r.has_draft_tokens else 0)
        if self.max_context_length is not None and n > self.max_context_length:
            n, self.all_fit = self.max_context_length, False
        self.to_chunk.append(r)
        self.chunked_tokens += n
        return _ADDED

    def _generation(self, r) -> int:
        bw = r.get_beam_width_by_iter()
        n = bw + r.num_draft_tokens
        if self._over(n):
            return _OVER
        if self.beam == 0:
            self.beam = bw
        elif self.beam != bw:
            return _SKIPPED
        self.generation.append(r)
        self.batch_num_tokens += n
        return _ADDED

    def _count(self) -> None:
        self.req_size += 1
        self.num_fitting += 1
        if self.req_size >= self.max_batch_size:
            self.batch_full = True

    def try_add(self, r) -> bool:
        if r.request_id in self.inflight or r.is_disagg_generation_init_state:
            return True
        st = r.state_value
        if not CONTEXT_INIT <= st < GEN_TO_COMPLETE:
            return True
        added = self._context(r) if st == CONTEXT_INIT else self._generation(r)
        if added == _OVER:
            return False
        if added == _ADDED:
            self._count()
        return True

    def try_add_generation(self, r) -> int:
        if r.request_id in self.inflight:
            return CONTINUE
        added = self._generation(r)
        if added == _OVER:
            return OVER_BUDGET
        if added == _SKIPPED:
            return CONTINUE
        self._count()
        return FULL if self.batch_full else CONTINUE

    def try_add_context(self, r) -> bool:
        if r.request_id in self.inflight or r.is_disagg_generation_init_state:
            return True
        if self._context(r) == _OVER:
            return False
        self._count()
        return True

    def finalize(self):
        """(context requests, generation requests, num_fitting): chunk sizes written, sorted."""
        budget = self.max_num_tokens
        if budget is not None and self.chunked_tokens > budget - self.batch_num_tokens:
            self.all_fit = False
        if self.all_fit:
            for r in self.to_chunk:
                r.context_chunk_size = r.context_remaining_length
        else:
            cap = None if budget is None else budget - self.batch_num_tokens
            set_ctx_requests_chunk_size(self.to_chunk, self.config, cap)
        context = self.context + [r for r in self.to_chunk if r.context_chunk_size > 0]
        return _sort(context, not self.all_fit), _sort(self.generation, False), self.num_fitting


def schedule_guaranteed_no_evict(ctx: CapacityContext, reqs: list, tracker: TokenBudgetTracker,
                                 static_batch: bool = False):
    kv, cross, peft = ctx.kv, ctx.cross_kv, ctx.peft
    claimed, task_ids = 0, set()
    scheduled, pending, pending_disagg = [], [], []
    for r in reqs:
        disagg = r.is_disagg_generation_init_state
        if not disagg and not ctx.can_be_scheduled(r):
            continue
        if len(scheduled) >= ctx.max_num_requests:
            break
        if not disagg and r.state_value == GEN_IN_PROGRESS:  # the exact state, as TensorRT-LLM's loop
            rc = tracker.try_add_generation(r)
            if rc == OVER_BUDGET:
                break
            scheduled.append(r)
            task = r.lora_task_id
            if task is not None and task not in task_ids:
                claimed += peft.determine_num_pages(r) if peft is not None else 0
                task_ids.add(task)
            if rc == FULL:
                break
        elif disagg:
            pending_disagg.append(r)
        else:
            pending.append(r)
    if tracker.batch_full or len(scheduled) >= ctx.max_num_requests:
        return scheduled, []
    if static_batch and scheduled:
        return scheduled, []
    avail = kv.num_free_blocks
    avail_cross = cross.num_free_blocks if cross is not None else 0
    for r in scheduled:
        avail -= kv.get_remaining_blocks_to_completion(r)
        if cross is not None:
            avail_cross -= cross.get_remaining_blocks_to_completion(r)
    avail_pages = (peft.max_device_pages if peft is not None else INT32_MAX) - claimed
    return admit_pending(ctx, reqs, (pending_disagg, pending), scheduled, (avail, avail_cross, avail_pages),
                         task_ids, static_batch, tracker), []


def schedule_static_batch(ctx: CapacityContext, reqs: list, tracker: TokenBudgetTracker):
    return schedule_guaranteed_no_evict(ctx, reqs, tracker, static_batch=True)
