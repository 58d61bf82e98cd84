"""tllm_sched/policies/reuse_skipping.py: delay new requests whose uncached prefix another computes.

C++ twin: ext/policies/reuse_skipping.cpp. Mirrors CapacityScheduler's step A (keys of chunked
contexts in progress) and beneficialToSkip (step B), scheduler.md §2.3. One batched
`find_new_context_block_batch` call per step gives every context's key as an integer id.
"""

from __future__ import annotations

import numpy as np

from tllm_sched.policies.common import StepContext, is_context_init


class ReuseSkipper:
    """Key ids of the active list's contexts and the set of claimed keys."""

    __slots__ = ("enabled", "key", "candidate", "prefill", "claimed")

    def __init__(self, ctx: StepContext, enabled: bool = True):
        # Callers use NO_SKIP when reuse is off; this stays correct either way.
        self.enabled = bool(enabled and ctx.reuse and ctx.kv is not None)
        self.prefill: set = set()  # step A: keys of contexts already prefilling
        self.claimed: set = set()  # the live set of the scalar path
        self.key = self.candidate = None
        if not self.enabled:
            return
        is_ctx = is_context_init(ctx.state)
        idx = is_ctx.nonzero()[0]
        key = np.full(ctx.slots.size, -1, dtype=np.int64)
        if idx.size:
            key[idx] = ctx.kv.find_new_context_block_batch(ctx.slots[idx])
        self.key = key
        # Step B applies to first-chunk contexts that have a key; step A claims the others' keys.
        self.candidate = is_ctx & ctx.first_chunk & (key >= 0)
        started = key[is_ctx & ~ctx.first_chunk]
        self.prefill = set(started[started >= 0].tolist())
        self.claimed = set(self.prefill)

    def skip_flags(self, order: np.ndarray) -> np.ndarray:
        """Skip decisions for the list positions `order`, each evaluated once, in that order,
        starting from the step-A set. Pure: the live set is not changed."""
        if not self.enabled or order.size == 0:
            return np.zeros(order.size, dtype=bool)
        cand = self.candidate[order]
        keys = self.key[order]
        skip = np.zeros(order.size, dtype=bool)
        ci = cand.nonzero()[0]
        if ci.size:
            ck = keys[ci]
            _, first = np.unique(ck, return_index=True)
            dup = np.ones(ci.size, dtype=bool)
            dup[first] = False  # the first request with a key claims it
            if self.prefill:
                dup |= np.isin(ck, np.fromiter(self.prefill, dtype=np.int64, count=len(self.prefill)))
            skip[ci] = dup
        return skip

    def claim_all(self, order: np.ndarray) -> None:
        """Sets the live set to what evaluating `order` (in order) would have claimed."""
        if self.enabled:
            cand = order[self.candidate[order]]
            self.claimed = self.prefill | set(self.key[cand].tolist())

    def beneficial_to_skip(self, pos: int) -> bool:
        """Scalar step B for one list position (claims its key if new)."""
        if not self.enabled or not self.candidate[pos]:
            return False
        k = int(self.key[pos])
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


def make_skipper(ctx: StepContext, enabled: bool = True):
    return ReuseSkipper(ctx, enabled) if (enabled and ctx.reuse and ctx.kv is not None) else NO_SKIP
