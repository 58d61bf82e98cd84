"""tllm_sched/policies/reuse_skipping.py: delay new requests whose uncached prefix another computes.

C++ twin: ext/policies/reuse_skipping.cpp; python-naive twin: tllm_sched/naive/reuse_skipping.py.
Mirrors CapacityScheduler's step A (keys of chunked contexts in progress) and beneficialToSkip
(step B).

Keys are asked for lazily, like C++ does: a key walk costs the prompt's cached prefix, and a long
queue of waiting prompts (real conversation traces) would otherwise pay it for requests the policy
never reaches. Callers evaluate a first window of requests; only if admission gets past it do they
ask for the rest. `find_new_context_block_batch(..., continue_pass=True)` keeps the integer key
ids comparable across those calls.
"""

from __future__ import annotations

import numpy as np

from tllm_sched.policies.common import CapacityContext, is_context_init

FIRST_WINDOW = 64  # the most requests whose keys the first query covers
WINDOW_SLACK = 2  # beyond the point where admission must stop if nothing were skipped
SET_MAX_CANDIDATES = 32  # below this many candidates a Python set beats np.unique / np.isin


class ReuseSkipper:
    """Integer keys of a list's contexts (asked for on demand) and the claimed set. Positions
    index `slots`: the whole active list, or (split paths) just its non-generation entries."""

    __slots__ = ("enabled", "kv", "slots", "key", "known", "candidate", "prefill", "claimed", "_pass_open",
                 "_started")

    def __init__(self, kv, slots: np.ndarray, is_ctx: np.ndarray, first: np.ndarray):
        """`is_ctx`: in a context-init state; `first`: at its first context chunk (per entry)."""
        self.enabled = True
        self.kv, self.slots = kv, slots
        n = slots.size
        self.key = np.full(n, -1, dtype=np.int64)  # first-new-block key id, -1 for none
        self.known = np.zeros(n, dtype=bool)  # key asked for already
        self._pass_open = False
        # Step B applies to first-chunk contexts; step A claims the keys of those in progress.
        # Step A's keys are asked for with the first step-B keys (one call for both), or never
        # if no step-B key is needed: a key question has no side effect on the cache.
        self.candidate = is_ctx & first
        self._started = (is_ctx & ~first).nonzero()[0]
        self.prefill, self.claimed = set(), set()  # step A's keys; the live set

    def _fetch(self, pos: np.ndarray) -> None:
        """Asks for the keys of the positions not known yet, and step A's if still pending (one
        crossing, if any)."""
        started = self._started
        if started is not None:
            pos = np.concatenate((started, pos)) if pos.size else started
        need = pos[~self.known.take(pos)]
        if need.size:
            ids = self.kv.find_new_context_block_batch(self.slots.take(need), continue_pass=self._pass_open)
            self._pass_open = True
            self.key[need] = ids
            self.known[need] = True
        if started is not None:
            self._started = None
            keys = self.key.take(started)
            self.prefill.update(keys[keys >= 0].tolist())
            self.claimed.update(self.prefill)

    def skip_flags(self, order: np.ndarray) -> np.ndarray:
        """Skip decisions for the list positions `order`, evaluated in that order after every
        position evaluated so far; their keys are claimed (the live set grows)."""
        skip = np.zeros(order.size, dtype=bool)
        ci = self.candidate.take(order).nonzero()[0]
        if ci.size == 0:
            return skip
        cpos = order.take(ci)
        self._fetch(cpos)
        ck = self.key.take(cpos)
        if ci.size < SET_MAX_CANDIDATES:
            claimed = self.claimed
            for j, k in enumerate(ck.tolist()):
                if k >= 0:
                    if k in claimed:
                        skip[ci[j]] = True
                    else:
                        claimed.add(k)
            return skip
        has = ck >= 0
        _, first = np.unique(ck, return_index=True)
        dup = np.ones(ci.size, dtype=bool)
        dup[first] = False  # the first request with a key claims it
        if self.claimed:
            dup |= np.isin(ck, np.fromiter(self.claimed, dtype=np.int64, count=len(self.claimed)))
        skip[ci] = dup & has
        self.claimed.update(ck[has].tolist())
        return skip

    def claim_all(self, order: np.ndarray) -> None:
        """Sets the live set to what evaluating `order` (in order, keys known) would have claimed."""
        self._fetch(order[:0])  # step A's keys, if not asked for yet
        cand = order[self.candidate.take(order)]
        keys = self.key.take(cand)
        self.claimed = self.prefill | set(keys[keys >= 0].tolist())

    def beneficial_to_skip(self, pos: int) -> bool:
        """Scalar step B for one list position (claims its key if new)."""
        if not self.candidate[pos]:
            return False
        if not self.known[pos]:
            rest = np.arange(pos, self.key.size)
            self._fetch(rest[self.candidate[pos:]])  # every candidate from here on, in one call
        k = int(self.key[pos])
        if k < 0:
            return False
        if k in self.claimed:
            return True
        self.claimed.add(k)
        return False


class _NoSkip:
    """The skipper of a cache without block reuse: never skips, claims nothing."""

    enabled = False

    @staticmethod
    def skip_flags(order: np.ndarray) -> np.ndarray:
        return np.zeros(order.size, dtype=bool)

    @staticmethod
    def beneficial_to_skip(pos: int) -> bool:
        return False

    @staticmethod
    def claim_all(order: np.ndarray) -> None:
        pass


NO_SKIP = _NoSkip()


def make_skipper(ctx: CapacityContext, enabled: bool = True):
    """The skipper of the whole active list (NO_SKIP without block reuse)."""
    if not (enabled and ctx.reuse and ctx.kv is not None):
        return NO_SKIP
    return ReuseSkipper(ctx.kv, ctx.slots, is_context_init(ctx.state), ctx.first_chunk)


def windows(order: np.ndarray, reach: int):
    """The two slices callers evaluate: a first window covering the `reach` requests admission
    gets to when nothing is skipped (plus a little slack), then the rest. Skipping only moves
    the stop later, so the second slice is asked for only when admission gets past the first."""
    first = min(FIRST_WINDOW, reach + WINDOW_SLACK)
    yield order[:first]
    if order.size > first:
        yield order[first:]
