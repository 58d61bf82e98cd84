"""tllm_sched/naive_scheduler.py: the "python-naive" backend, a BASELINE, not for production use.

The same policy semantics as tllm_sched/policies, structured like TensorRT-LLM's first Python
port (PyCapacityScheduler / PyMicroBatchScheduler, PR #10273): it walks request objects and reads
every property and asks every cache question per request, each a Python -> C++ crossing. It
exists to show what batching buys; its decisions equal the other backends'.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from tllm_sched._core import SchedulingError
from tllm_sched.backend import SchedulerOutput
from tllm_sched.crossings import CountingProxy
from tllm_sched.micro_batch_scheduler import context_too_long
from tllm_sched.policies import chunking
from tllm_sched.policies.common import CONTEXT_INIT, DISAGG_GEN_INIT, GEN_COMPLETE, GEN_TO_COMPLETE

INT32_MAX = 2**31 - 1


def _slots(reqs) -> np.ndarray:
    return np.array([r.slot for r in reqs], dtype=np.int32)


class _Skipper:
    """Step A / B of reuse skipping, one find_new_context_block call per request."""

    def __init__(self, kv, reqs, enabled: bool):
        self.kv = kv if (enabled and kv is not None and kv.enable_block_reuse) else None
        self.keys = set()
        if self.kv is None:
            return
        for r in reqs:
            if r.is_context_init_state and not r.is_first_context_chunk:
                k = self._key(r)
                if k is not None:
                    self.keys.add(k)

    def _key(self, r):
        found = self.kv.find_new_context_block(r)
        return None if found is None else (found[0].tobytes(), found[1])

    def beneficial_to_skip(self, r) -> bool:
        if self.kv is None or not (r.is_context_init_state and r.is_first_context_chunk):
            return False
        k = self._key(r)
        if k is None:
            return False
        if k in self.keys:
            return True
        self.keys.add(k)
        return False


class NaiveBackend:
    def __init__(self, config, table, kv, cross_kv, peft, counter=None):
        wrap = (lambda o: None if o is None else CountingProxy(o, counter)) if counter else (lambda o: o)
        self._wrap = wrap
        self.table, self.kv, self.cross, self.peft = wrap(table), wrap(kv), wrap(cross_kv), wrap(peft)
        self.config = config
        self.no_schedule_until_state, self.no_schedule_after_state = CONTEXT_INIT, GEN_COMPLETE

    def _handles(self, slots) -> list:
        return [self._wrap(self.table.request_at(int(s))) for s in slots]

    # ------------------------------------------------------------------ capacity
    def _capacity(self, reqs: list):
        if self.kv is None:
            return self._max_requests(reqs), []
        policy = self.config.policy
        if policy == "MAX_UTILIZATION":
            return self._max_utilization(reqs)
        return self._no_evict(reqs, static_batch=policy == "STATIC_BATCH"), []

    def _schedulable(self, r, disagg_exception: bool) -> bool:
        st = r.state_value
        return (disagg_exception and st == DISAGG_GEN_INIT) or self.no_schedule_until_state <= st < self.no_schedule_after_state

    def _max_requests(self, reqs):
        out = []
        for r in reqs:
            if not self._schedulable(r, False):
                continue
            if len(out) >= self.config.max_num_requests:
                break
            if r.is_encoder_init_state or r.is_context_init_state or r.is_generation_in_progress_state:
                out.append(r)
        return out

    def _no_evict(self, reqs, static_batch: bool):
        kv, cross, peft, cfg = self.kv, self.cross, self.peft, self.config
        avail = kv.num_free_blocks
        avail_cross = cross.num_free_blocks if cross is not None else 0
        max_pages = peft.max_device_pages if peft is not None else INT32_MAX
        claimed, task_ids = 0, set()
        scheduled, pending, pending_disagg = [], [], []
        for r in reqs:
            if not self._schedulable(r, True):
                continue
            if len(scheduled) >= cfg.max_num_requests:
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
            return scheduled
        avail_pages = max_pages - claimed
        skipper = _Skipper(kv, reqs, enabled=not static_batch)
        for lst in (pending_disagg, pending):
            for r in lst:
                disagg = r.is_disagg_generation_init_state
                if not disagg and skipper.beneficial_to_skip(r):
                    continue
                if len(scheduled) >= cfg.max_num_requests:
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
        return scheduled

    def _started(self, r) -> bool:
        return self._schedulable(r, False) and (
            (r.is_context_init_state and not r.is_first_context_chunk) or r.is_generation_in_progress_state)

    def _max_utilization(self, reqs):
        kv, peft, cfg = self.kv, self.peft, self.config
        kv.start_scheduling()
        skipper = _Skipper(kv, reqs, enabled=True)
        scheduled, paused, seen = [], [], set()
        blocks, pages_used = 0, 0
        i, end = 0, len(reqs)
        while i < end:
            r = reqs[i]
            if not self._schedulable(r, True) or skipper.beneficial_to_skip(r):
                i += 1
                continue
            if len(scheduled) < cfg.max_num_requests:
                task = r.lora_task_id
                new_task = task is not None and task not in seen
                pages = peft.determine_num_pages(r) if (new_task and peft is not None) else 0
                total = blocks + kv.get_needed_blocks_one_step(r, cfg.two_steps_look_ahead)
                fits_peft = peft is None or pages + pages_used <= peft.max_device_pages
                if kv.scheduling_has_free_blocks(total) and fits_peft:
                    blocks, pages_used = total, pages_used + pages
                    scheduled.append(r)
                    if new_task:
                        seen.add(task)
                    i += 1
                    continue
            j = end - 1
            while j >= i and not self._started(reqs[j]):
                j -= 1
            if j < i:
                break
            kv.scheduling_remove_sequence(reqs[j].request_id)
            paused.append(reqs[j])
            end = j
        return scheduled, paused

    # ------------------------------------------------------------------ micro-batch
    def _micro(self, reqs: list, inflight_ids, max_batch_size: int, budget: Optional[int]):
        cfg = self.config
        chunk_cfg = cfg.chunking
        max_ctx = cfg.max_context_length
        inflight = set(np.asarray(inflight_ids).tolist()) if inflight_ids is not None else set()
        context, generation, to_chunk = [], [], []
        batch_tokens, chunked_tokens, count, beam, all_fit = 0, 0, 0, 0, True
        for r in reqs:
            st = r.state_value
            if not (CONTEXT_INIT <= st < GEN_TO_COMPLETE) or r.request_id in inflight:
                continue
            if r.is_encoder_init_state:
                n = r.encoder_output_len
                self._check_ctx(r, n, max_ctx)
                if budget is not None and batch_tokens + n > budget:
                    break
                context.append(r)
                batch_tokens += n
            elif r.is_context_init_state:
                if chunk_cfg is None:
                    n = r.get_num_tokens(0) + (r.num_draft_tokens if r.has_draft_tokens else 0)
                    self._check_ctx(r, n, max_ctx)
                    if budget is not None and batch_tokens + n > budget:
                        break
                    context.append(r)
                    batch_tokens += n
                else:
                    r.context_chunk_size = r.context_remaining_length
                    n = r.context_chunk_size + (r.num_draft_tokens if r.is_last_context_chunk and r.has_draft_tokens else 0)
                    if max_ctx is not None and n > max_ctx:
                        n, all_fit = max_ctx, False
                    to_chunk.append(r)
                    chunked_tokens += n
            else:
                bw = r.get_beam_width_by_iter()
                n = bw + r.num_draft_tokens
                if budget is not None and batch_tokens + n > budget:
                    break
                if beam == 0:
                    beam = bw
                elif beam != bw:
                    continue
                generation.append(r)
                batch_tokens += n
            count += 1
            if count >= max_batch_size:
                break
        if budget is not None and chunked_tokens > budget - batch_tokens:
            all_fit = False
        if not all_fit:
            cap = None if budget is None else budget - batch_tokens
            self._chunk(to_chunk, cap)
        context += [r for r in to_chunk if r.context_chunk_size > 0]
        return self._sort(context, not all_fit), self._sort(generation, False)

    @staticmethod
    def _check_ctx(r, n: int, max_ctx: Optional[int]) -> None:
        if max_ctx is not None and n > max_ctx:
            raise SchedulingError(context_too_long(r.request_id, n, max_ctx))

    def _chunk(self, reqs: list, capacity: Optional[int]) -> None:
        # Callers pass context requests only (set_ctx_requests_chunk_size checks): zeroing first is safe.
        cfg = self.config
        for r in reqs:
            r.context_chunk_size = 0
        chunks, discard = chunking.set_ctx_requests_chunk_size(
            [r.context_remaining_length for r in reqs], [r.num_draft_tokens for r in reqs],
            cfg.chunking.policy, capacity, cfg.chunking.unit_size, cfg.max_context_length)
        for r, c, d in zip(reqs, chunks, discard):
            r.context_chunk_size = c
            if d > 0:
                r.discard_draft_tokens(d)

    @staticmethod
    def _sort(reqs: list, chunks_present: bool) -> list:
        def lora(r):
            t = r.lora_task_id
            return -1 if t is None else t

        if not chunks_present:
            return sorted(reqs, key=lora)
        not_last = [r for r in reqs if not r.is_last_context_chunk]
        last = [r for r in reqs if r.is_last_context_chunk]
        return sorted(not_last, key=lora) + sorted(last, key=lora)

    # ------------------------------------------------------------------ the backend protocol
    def schedule(self, active, inflight_ids):
        reqs = [self._wrap(r) for r in self._wrap(active).requests()]
        fitting, paused = self._capacity(reqs)
        disagg = [r for r in fitting if r.is_disagg_generation_init_state]
        fit = [r for r in fitting if not r.is_disagg_generation_init_state]
        cfg = self.config
        ctx, gen = self._micro(fit, inflight_ids, cfg.max_batch_size, cfg.max_num_tokens)
        return SchedulerOutput(_slots(fit), _slots(disagg), _slots(paused), _slots(ctx), _slots(gen))

    def schedule_capacity(self, slots):
        fitting, paused = self._capacity(self._handles(slots))
        disagg = [r for r in fitting if r.is_disagg_generation_init_state]
        fit = [r for r in fitting if not r.is_disagg_generation_init_state]
        return _slots(fit), _slots(disagg), _slots(paused)

    def schedule_micro(self, slots, inflight_ids):
        cfg = self.config
        ctx, gen = self._micro(self._handles(slots), inflight_ids, cfg.max_batch_size, cfg.max_num_tokens)
        return _slots(ctx), _slots(gen)

    def set_ctx_requests_chunk_size(self, slots) -> None:
        reqs = self._handles(slots)
        # Check every request before changing any (all-or-nothing, as the C++ setter).
        for r in reqs:
            if not r.is_context_init_state:
                raise ValueError(f"request {r.request_id} is not in a context state")
        self._chunk(reqs, self.config.max_num_tokens)
