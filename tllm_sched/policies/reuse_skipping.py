"""tllm_sched/policies/reuse_skipping.py: delay new requests whose uncached prefix another computes.

C++ twin: ext/policies/reuse_skipping.cpp; python-naive twin: tllm_sched/naive/reuse_skipping.py.
Mirrors CapacityScheduler's step A (keys of chunked contexts in progress) and beneficialToSkip
(step B).

Keys are asked for lazily, like C++ does: admission usually stops after a few waiting requests,
and a long queue (real conversation traces) would otherwise pay for requests the policy never
reaches. Callers evaluate windows of requests in list order: the first reaches where admission
must stop if nothing were skipped, each further one (asked for only when admission gets past the
previous) is GROWTH times larger, so the keys asked for stay within a constant factor of those the
C++ loop computes (every request before where admission would stop without skipping is asked
about in C++ too). Each window is one call; a policy passes how many calls its step can
spend on keys within the crossing budget, and only the last of them takes the rest of the list.

Without PEFT (GUARANTEED_NO_EVICT's split path, MAX_UTILIZATION) the policies do not ask here:
they run the C++ policy's loop in one call (design.md, implementation difference 14); these
windows serve the general paths (PEFT, a cross cache, disagg states).

The cache keeps the keys of one pass and which of them are claimed: each call claims the keys
of its requests in order and answers per request (no key, claimed now, claimed before: skip), so
a window's decisions are one call and one comparison, whatever its size.
"""

from __future__ import annotations

import numpy as np

from tllm_sched.policies.common import CapacityContext, is_context_init

WINDOW_SLACK = 2  # beyond the point where admission must stop if nothing were skipped
GROWTH = 4  # each further window is at least this many times the previous one
MIN_WINDOW = 64  # the fewest candidates a scalar step B asks for at once
WINDOW_CAP = None  # tests cap every window to force many questions
_NOT_ASKED, _CLAIMED_BEFORE = -1, 2  # claim_new_context_blocks answers: 0 no key, 1 claimed now, 2 skip


class ReuseSkipper:
    """The claims of a list's contexts (asked for on demand, in list order). Positions index
    `slots`: the whole active list, or (split paths) just its non-generation entries."""

    __slots__ = ("enabled", "kv", "slots", "candidate", "_is_ctx", "_first", "_claim", "_asked", "_pass_open",
                 "_calls", "_size", "_last")

    def __init__(self, kv, slots: np.ndarray, is_ctx, first: np.ndarray, calls: int):
        """`is_ctx`: in a context-init state (None: every entry is); `first`: at its first
        context chunk (per entry); `calls`: the most key questions this step may ask (>= 1)."""
        self.enabled = True
        self.kv, self.slots = kv, slots
        self._pass_open = False
        self._calls, self._size, self._last = calls, 0, -1  # questions left; last window; last scalar position
        # Step B applies to first-chunk contexts; step A claims the keys of those in progress.
        # Step A's claims are made with the first step-B question (one call for both), or never
        # if no step-B question is asked: no later question could see them.
        self._is_ctx, self._first = is_ctx, first
        self.candidate = first if is_ctx is None else is_ctx & first
        # The cache's answer per position (int8, _NOT_ASKED), built only when a scalar step B
        # needs it; until then the answers of each question are kept as they came.
        self._claim, self._asked = None, []

    def windows(self, order: np.ndarray, reach: int):
        """Slices of `order` to evaluate in turn, each asked for only when admission got past the
        previous one: the first covers `reach` requests (plus slack), each next one GROWTH times
        the previous, the last call left takes the rest."""
        start, size = 0, reach + WINDOW_SLACK
        while True:  # at least one (maybe empty) window
            if WINDOW_CAP is not None:
                size = min(size, WINDOW_CAP)
            end = order.size if self._calls <= 1 else min(start + size, order.size)
            self._size = end - start
            yield order[start:end]
            if end >= order.size:
                return
            start, size = end, size * GROWTH

    def _ask(self, pos: np.ndarray) -> np.ndarray:
        """Claims the keys of candidate positions `pos` (in list order, after every position
        asked so far), step A's first on the first question: one call. Returns the answers."""
        slots = self.slots.take(pos)
        if not self._pass_open and not self._first.all():  # some context may be in progress
            started = ~self._first if self._is_ctx is None else self._is_ctx & ~self._first
            slots = np.concatenate((self.slots[started], slots))
        answers = self.kv.claim_new_context_blocks(slots, continue_pass=self._pass_open)
        self._pass_open = True
        self._calls -= 1
        answers = answers[answers.size - pos.size:]
        if self._claim is None:
            self._asked.append((pos, answers))
        else:
            self._claim[pos] = answers
        return answers

    def skip_flags(self, order: np.ndarray) -> np.ndarray:
        """Skip decisions for the list positions `order`, evaluated in that order after every
        position evaluated so far (their keys are claimed)."""
        mask = self.candidate.take(order)
        cand = order[mask]
        skip = np.zeros(order.size, dtype=bool)
        if cand.size:
            skip[mask] = self._ask(cand) == _CLAIMED_BEFORE
        return skip

    def beneficial_to_skip(self, pos: int) -> bool:
        """Scalar step B for one list position, positions visited in order; asked again for the
        same position (retried after a pause), its own claim counts, as in C++. An unknown
        answer is asked for with those of the next candidates: GROWTH times the last window
        (the rest of the list on the last call left)."""
        if not self.candidate[pos]:
            return False
        claim = self._claim
        if claim is None:
            claim = self._claim = np.full(self.slots.size, _NOT_ASKED, dtype=np.int8)
            for asked, answers in self._asked:
                claim[asked] = answers
        if claim[pos] == _NOT_ASKED:  # then no later candidate was asked either
            rest = pos + self.candidate[pos:].nonzero()[0]
            self._size = max(MIN_WINDOW, self._size * GROWTH)
            if WINDOW_CAP is not None:
                self._size = min(self._size, WINDOW_CAP)
            self._ask(rest if self._calls <= 1 else rest[:self._size])
        answer = int(claim[pos])
        if pos == self._last:
            return answer != 0
        self._last = pos
        return answer == _CLAIMED_BEFORE


class _NoSkip:
    """The skipper of a cache without block reuse: never skips, claims nothing."""

    enabled = False

    @staticmethod
    def skip_flags(order: np.ndarray) -> np.ndarray:
        return np.zeros(order.size, dtype=bool)

    @staticmethod
    def beneficial_to_skip(pos: int) -> bool:
        return False



NO_SKIP = _NoSkip()


def make_skipper(ctx: CapacityContext, calls: int, enabled: bool = True):
    """The skipper of the whole active list (NO_SKIP without block reuse)."""
    if not (enabled and ctx.reuse and ctx.kv is not None):
        return NO_SKIP
    return ReuseSkipper(ctx.kv, ctx.slots, is_context_init(ctx.state), ctx.first_chunk, calls)
