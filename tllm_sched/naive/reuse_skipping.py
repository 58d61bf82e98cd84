"""tllm_sched/naive/reuse_skipping.py: delay new requests whose uncached prefix another computes.

Twins: ext/policies/reuse_skipping.cpp, tllm_sched/policies/reuse_skipping.py. Mirrors
CapacityScheduler's step A (keys of chunked contexts in progress) and beneficialToSkip (step B),
one find_new_context_block call per request.
"""

from __future__ import annotations


class ReuseSkipper:
    """Step A in the constructor; step B per request. Never skips without block reuse."""

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
        """True if a first-chunk context's key is already claimed; otherwise claims it."""
        if self.kv is None or not (r.is_context_init_state and r.is_first_context_chunk):
            return False
        k = self._key(r)
        if k is None:
            return False
        if k in self.keys:
            return True
        self.keys.add(k)
        return False
