"""tllm_sched/naive/micro_batch_scheduler.py: batch size, token budget and chunked prefill, per request.

Twins: ext/micro_batch_scheduler.cpp, tllm_sched/micro_batch_scheduler.py. Mirrors
MicroBatchScheduler: a walk over the fitting requests until the batch size or the token budget
is reached, then chunking of the contexts when they do not all fit, then the output order (by
LoRA task; with partial chunks, non-last chunks first).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from tllm_sched._core import SchedulingError
from tllm_sched.micro_batch_scheduler import context_too_long
from tllm_sched.naive.chunking import set_ctx_requests_chunk_size
from tllm_sched.policies.common import CONTEXT_INIT, GEN_TO_COMPLETE


def schedule(reqs: list, inflight_ids, config):
    """(context requests, generation requests) in output order; commits chunk sizes and discards."""
    chunk_cfg = config.chunking
    max_ctx = config.max_context_length
    budget, max_batch_size = config.max_num_tokens, config.max_batch_size
    inflight = set(np.asarray(inflight_ids).tolist()) if inflight_ids is not None else set()
    context, generation, to_chunk = [], [], []
    batch_tokens, chunked_tokens, count, beam, all_fit = 0, 0, 0, 0, True
    for r in reqs:
        st = r.state_value
        if not (CONTEXT_INIT <= st < GEN_TO_COMPLETE) or r.request_id in inflight:
            continue
        if r.is_encoder_init_state:
            n = r.encoder_output_len
            _check_context_length(r, n, max_ctx)
            if budget is not None and batch_tokens + n > budget:
                break
            context.append(r)
            batch_tokens += n
        elif r.is_context_init_state:
            if chunk_cfg is None:
                n = r.get_num_tokens(0) + (r.num_draft_tokens if r.has_draft_tokens else 0)
                _check_context_length(r, n, max_ctx)
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
        set_ctx_requests_chunk_size(to_chunk, config, cap)
    context += [r for r in to_chunk if r.context_chunk_size > 0]
    return _sort(context, not all_fit), _sort(generation, False)


def _check_context_length(r, n: int, max_ctx: Optional[int]) -> None:
    if max_ctx is not None and n > max_ctx:
        raise SchedulingError(context_too_long(r.request_id, n, max_ctx))


def _sort(reqs: list, chunks_present: bool) -> list:
    def lora(r):
        t = r.lora_task_id
        return -1 if t is None else t

    if not chunks_present:
        return sorted(reqs, key=lora)
    not_last = [r for r in reqs if not r.is_last_context_chunk]
    last = [r for r in reqs if r.is_last_context_chunk]
    return sorted(not_last, key=lora) + sorted(last, key=lora)
