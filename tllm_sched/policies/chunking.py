"""tllm_sched/policies/chunking.py: context chunk sizes under a token capacity.

C++ twin: ext/policies/chunking.cpp; python-naive twin: tllm_sched/naive/chunking.py.
Mirrors MicroBatchScheduler::setCtxRequestsChunkSize with EQUAL_PROGRESS,
FIRST_COME_FIRST_SERVED and fitDraftTokens. Works on plain lists (chunked contexts per step are
few) and returns the decisions; the caller commits them.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

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
        act = want  # comparisons, not min(): this loop runs on every chunked step
        if left is not None and left < act:
            act = left
        if max_ctx is not None and max_ctx < act:
            act = max_ctx
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


# --------------------------------------------------------------------------- vectorised twins
# Many waiting contexts (hundreds per step in mixed prefill + decode) make the scalar loops the
# step's main cost. These give identical results with a few array passes; tests/test_chunking_vec.py
# checks them against the scalar versions above.

VECTOR_MIN_ITEMS = 32  # below this the plain loops are faster


def _greedy_tail(want: np.ndarray, fits_whole, start: int, left: int, out: np.ndarray) -> int:
    """With `left` below one unit, a request whose whole remainder fits takes it; any other gets 0.
    Fewer than `unit` requests can fit, so this loops that few times. `fits_whole` None: all may."""
    i = start
    if left <= 0 or i >= want.size or want[i:].min() > left:
        return left  # the common case: every remaining request wants more than is left
    while left > 0 and i < want.size:
        fits = want[i:] <= left
        cand = (fits if fits_whole is None else fits_whole[i:] & fits).nonzero()[0]
        if cand.size == 0:
            break
        k = i + int(cand[0])
        out[k] = want[k]
        left -= int(want[k])
        i = k + 1
    return left


def _first_come_first_served_vec(want, cap, unit, max_ctx) -> np.ndarray:
    if max_ctx is None:
        whole, lim, base = None, want, want  # the chunk while capacity is not binding: all of it
    else:
        whole, lim = want <= max_ctx, np.minimum(want, max_ctx)
        base = np.where(whole, want, lim // unit * unit)
    if cap is None:
        return base
    out = np.zeros(want.size, dtype=np.int64)
    total = base.cumsum()
    j = int(total.searchsorted(cap, side="right"))  # requests 0..j-1 get their base chunk
    out[:j] = base[:j]
    if j == want.size:
        return out
    left = cap - (int(total[j - 1]) if j else 0)
    act = min(left, int(lim[j]))
    if act != want[j]:
        act = act // unit * unit
    out[j] = act
    left -= act  # now below one unit
    _greedy_tail(want, whole, j + 1, left, out)
    return out


def _equal_progress_vec(remaining, cap, unit, max_ctx) -> np.ndarray:
    chunk = np.zeros(remaining.size, dtype=np.int64)
    num, progress = 0, 1
    while (cap is None or num < cap) and progress > 0:
        grown = np.minimum(chunk + unit, remaining)
        inc = grown - chunk
        ok = np.ones(remaining.size, dtype=bool) if max_ctx is None else grown <= max_ctx
        inc_ok = np.where(ok, inc, 0)
        if cap is None:
            chunk = np.where(ok, grown, chunk)
            progress = int(inc_ok.sum())
            num += progress
            continue
        total = inc_ok.cumsum()
        j = int(total.searchsorted(cap - num, side="right"))  # 0..j-1 all grow
        applied = np.zeros(remaining.size, dtype=bool)
        applied[:j] = ok[:j]
        progress = int(total[j - 1]) if j else 0
        if j < remaining.size:
            # Request j does not fit; later ones grow only if their increment fits what is left
            # (smaller than one unit now).
            left = cap - num - progress
            i = j + 1
            while left > 0 and i < remaining.size:
                cand = (ok[i:] & (inc[i:] <= left) & (inc[i:] > 0)).nonzero()[0]
                if cand.size == 0:
                    break
                k = i + int(cand[0])
                applied[k] = True
                left -= int(inc[k])
                progress += int(inc[k])
                i = k + 1
        chunk = np.where(applied, grown, chunk)
        num += progress
    return chunk


def _fit_draft_tokens_vec(chunk, remaining, draft, cap, unit, max_ctx) -> np.ndarray:
    if not draft.any():
        return draft  # no draft tokens: nothing to discard
    last = (chunk == remaining) & (draft > 0)
    space = np.where(chunk % unit == 0, 0, unit - chunk % unit)
    if max_ctx is not None:
        space = np.minimum(space, max_ctx - chunk)
    space = np.where(last, space, 0)
    if cap is not None:
        # Each takes its room while capacity lasts, in order.
        before = space.cumsum() - space
        space = np.minimum(space, np.maximum(0, cap - int(chunk.sum()) - before))
    return np.where(last, np.maximum(0, draft - space), 0)


def set_ctx_requests_chunk_size_vec(remaining: np.ndarray, draft: np.ndarray, policy: str, capacity: Optional[int],
                                    unit: int, max_context_length: Optional[int]):
    """Array twin of `set_ctx_requests_chunk_size`: (chunk sizes, discards) as int64 arrays."""
    remaining = remaining.astype(np.int64)
    draft = draft.astype(np.int64)
    chunk = _policy(policy)[1](remaining, capacity, unit, max_context_length)
    return chunk, _fit_draft_tokens_vec(chunk, remaining, draft, capacity, unit, max_context_length)


def set_ctx_requests_chunk_size(
    remaining: List[int], draft: List[int], policy: str, capacity: Optional[int], unit: int,
    max_context_length: Optional[int],
) -> Tuple[List[int], List[int]]:
    """(chunk sizes, draft tokens to discard) for contexts with these remainders, in order."""
    chunk = _policy(policy)[0](remaining, capacity, unit, max_context_length)
    return chunk, _fit_draft_tokens(chunk, remaining, draft, capacity, unit, max_context_length)


# The chunking policies: name (the C++ enum member) -> (scalar, array) implementations.
POLICIES = {
    FIRST_COME_FIRST_SERVED: (_first_come_first_served, _first_come_first_served_vec),
    EQUAL_PROGRESS: (_equal_progress, _equal_progress_vec),
}


def policy_forms(policy: str):
    """(scalar, array) chunk sizes of a chunking policy, f(remaining, capacity, unit,
    max_context_length): for contexts without draft tokens (fitting none discards nothing)."""
    return _policy(policy)


def _policy(policy: str):
    """(scalar, array) implementations of a chunking policy."""
    try:
        return POLICIES[policy]
    except KeyError:
        raise ValueError(f"unknown chunking policy {policy!r}") from None
