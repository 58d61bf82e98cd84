"""tllm_sched/naive/chunking.py: context chunk sizes, read from and written to request handles.

Twins: ext/policies/chunking.cpp, tllm_sched/policies/chunking.py (whose scalar policies
compute the sizes). Mirrors MicroBatchScheduler::setCtxRequestsChunkSize: every remainder,
draft count, chunk size and discard crosses once per request.
"""

from __future__ import annotations

from typing import Optional

from tllm_sched.policies import chunking


def set_ctx_requests_chunk_size(reqs: list, config, capacity: Optional[int]) -> None:
    """Chunk sizes (and draft discards) of the context requests `reqs` within `capacity` tokens."""
    # Callers pass context requests only (the backend's setter checks): zeroing first is safe.
    for r in reqs:
        r.context_chunk_size = 0
    chunks, discard = chunking.set_ctx_requests_chunk_size(
        [r.context_remaining_length for r in reqs], [r.num_draft_tokens for r in reqs],
        config.chunking.policy, capacity, config.chunking.unit_size, config.max_context_length)
    for r, c, d in zip(reqs, chunks, discard):
        r.context_chunk_size = c
        if d > 0:
            r.discard_draft_tokens(d)
