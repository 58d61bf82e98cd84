"""tllm_sched/policies/chunking.py: context chunk sizes under a token capacity.

C++ twin: ext/policies/chunking.cpp. Mirrors MicroBatchScheduler::setCtxRequestsChunkSize with
EQUAL_PROGRESS, FIRST_COME_FIRST_SERVED and fitDraftTokens (scheduler.md §3.3). Works on plain
lists (chunked contexts per step are few) and returns the decisions; the caller commits them.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

EQUAL_PROGRESS = "EQUAL_PROGRESS"
FIRST_COME_FIRST_SERVED = "FIRST_COME_FIRST_SERVED"


def _equal_progress(remaining: List[int], cap: Optional[int], unit: int, max_ctx: Optional[int]) -> List[int]:
    chunk = [0] * len(remaining)
    num, progress = 0, 1
    while (cap is None or num < cap) and progress > 0:
        progress = 0
        for k, rem in enumerate(remaining):
            grown = min(chunk[k] + unit, rem)  # the setter clamps to the remainder
            inc = grown - chunk[k]
            if (cap is not None and num + inc > cap) or (max_ctx is not None and grown > max_ctx):
                continue
            chunk[k] = grown
            num += inc
            progress += inc
    return chunk


def _first_come_first_served(remaining: List[int], cap: Optional[int], unit: int, max_ctx: Optional[int]) -> List[int]:
    chunk, left = [], cap
    for want in remaining:
        act = want
        if left is not None:
            act = min(left, act)
        if max_ctx is not None:
            act = min(max_ctx, act)
        if act != want:
            act = act // unit * unit  # a truncated chunk ends on a unit
        chunk.append(act)
        if left is not None:
            left -= act
    return chunk


def _fit_draft_tokens(chunk, remaining, draft, cap, unit, max_ctx) -> List[int]:
    """Draft tokens may only fill the last chunk's partial unit: they never open a new one."""
    num = sum(chunk)
    discard = [0] * len(chunk)
    for k, (c, rem, d) in enumerate(zip(chunk, remaining, draft)):
        if c != rem or d <= 0:
            continue
        space = 0 if c % unit == 0 else unit - c % unit
        if max_ctx is not None:
            space = min(space, max_ctx - c)
        if cap is not None:
            space = min(space, cap - num)
            num += space
        discard[k] = max(0, d - space)
    return discard


def set_ctx_requests_chunk_size(
    remaining: List[int], draft: List[int], policy: str, capacity: Optional[int], unit: int,
    max_context_length: Optional[int],
) -> Tuple[List[int], List[int]]:
    """(chunk sizes, draft tokens to discard) for contexts with these remainders, in order."""
    if policy == EQUAL_PROGRESS:
        chunk = _equal_progress(remaining, capacity, unit, max_context_length)
    elif policy == FIRST_COME_FIRST_SERVED:
        chunk = _first_come_first_served(remaining, capacity, unit, max_context_length)
    else:
        raise ValueError(f"unknown chunking policy {policy!r}")
    return chunk, _fit_draft_tokens(chunk, remaining, draft, capacity, unit, max_context_length)
