"""tests/test_kv_cache_stateful.py: random operation sequences against KVCacheManager invariants.

Hypothesis drives adds/removes/stores/tokens/scheduling passes and invalid calls; after every step
the block pool must be consistent (kvcache.md §1.3, §2.1), and at teardown every block is free.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import tllm_sched as ts
from utils import kv_snapshot

TPB = 4
NUM_BLOCKS = 16
MAX_SEQ_LEN = 40
CAPACITY = 24
# A few fixed prefixes so that prompts share blocks, partially share blocks (P2 diverges from P0
# inside its second block), or share nothing.
PREFIXES = [
    list(range(0, 16)),
    list(range(100, 116)),
    list(range(0, 6)) + list(range(200, 210)),
    [7] * 16,
]


def ceil_div(a, b):
    return -(-a // b)


class KVMachine(RuleBasedStateMachine):
    REUSE = True
    SECONDARY = 0
    STORE_CONTEXT = True

    def __init__(self):
        super().__init__()
        self.t = ts.RequestTable(CAPACITY)
        self.kv = ts.KVCacheManager(self.t, TPB, NUM_BLOCKS, MAX_SEQ_LEN, enable_block_reuse=self.REUSE,
                                    num_secondary_blocks=self.SECONDARY)
        self.reqs = {}          # rid -> LlmRequest
        self.seq = {}           # rid -> KV token count (live sequences only)
        self.next_id = 0
        self.sched = None       # set of rids scheduling-removed in the current pass, None: no pass
        self.sched_free0 = None

    # ------------------------------------------------------------------ helpers

    def _mutated(self):
        self.sched = None

    def _no_seq(self):
        return sorted(r for r in self.reqs if r not in self.seq)

    def _expect_rejected(self, call, exc=ValueError):
        before = kv_snapshot(self.kv, list(self.reqs))
        n = len(self.t)
        with pytest.raises(exc):
            call()
        assert kv_snapshot(self.kv, list(self.reqs)) == before
        assert len(self.t) == n

    # ------------------------------------------------------------------ rules

    @precondition(lambda self: len(self.reqs) < CAPACITY)
    @rule(prefix=st.integers(0, len(PREFIXES) - 1), cut=st.integers(1, 16),
          suffix=st.lists(st.integers(0, 3), max_size=10), max_new=st.integers(1, 12),
          lora=st.sampled_from([None, None, None, 1]))
    def add_request(self, prefix, cut, suffix, max_new, lora):
        tokens = PREFIXES[prefix][:cut] + [1000 + x for x in suffix]
        rid = self.next_id
        self.next_id += 1
        self.reqs[rid] = self.t.add_request(rid, tokens, max_new, lora_task_id=lora)

    @precondition(lambda self: any(r not in self.seq for r in self.reqs))
    @rule(data=st.data())
    def add_sequence(self, data):
        rid = data.draw(st.sampled_from(self._no_seq()))
        r = self.reqs[rid]
        n = r.get_num_tokens()
        if n > MAX_SEQ_LEN:
            self._expect_rejected(lambda: self.kv.add_sequence(rid, n, 1, r))
            return
        free = self.kv.num_free_blocks
        before = kv_snapshot(self.kv, [rid])
        try:
            self.kv.add_sequence(rid, n, 1, r)
        except ValueError as e:
            assert "free blocks" in str(e)
            assert kv_snapshot(self.kv, [rid]) == before
            # Never rejected when every context block could come fresh from the free queue.
            assert ceil_div(n, TPB) > free
            return
        self._mutated()
        self.seq[rid] = n
        ids = self.kv.get_cache_block_ids(rid).tolist()
        assert len(ids) == ceil_div(n, TPB)
        assert len(set(ids)) == len(ids)
        # At most one free block per context block was consumed.
        assert free - self.kv.num_free_blocks <= len(ids)
        p = r.prepopulated_prompt_len
        if not self.REUSE:
            assert p == 0 and free - self.kv.num_free_blocks == len(ids)
        assert 0 <= p <= r.prompt_len - 1
        if p > 0:
            assert r.context_current_position == p and r.is_first_context_chunk

    @precondition(lambda self: self.STORE_CONTEXT and bool(self.seq))
    @rule(data=st.data())
    def store_context_blocks(self, data):
        rid = data.draw(st.sampled_from(sorted(self.seq)))
        free = self.kv.num_free_blocks
        self.kv.store_context_blocks(self.reqs[rid])
        self._mutated()
        assert self.kv.num_free_blocks == free
        if self.REUSE:
            # Full blocks of (tokens - 1) tokens, all now reachable in the tree (its own block or an
            # identical cached one).
            nfull = min((self.reqs[rid].get_num_tokens() - 1) // TPB, len(self.kv.get_cache_block_ids(rid)))
            assert self.kv.num_cached_blocks >= nfull

    @precondition(lambda self: bool(self.seq))
    @rule(data=st.data())
    def add_token(self, data):
        rid = data.draw(st.sampled_from(sorted(self.seq)))
        r = self.reqs[rid]
        n = self.seq[rid]
        if n >= MAX_SEQ_LEN or r.get_num_tokens() >= r.token_buffer.shape[0]:
            return
        boundary = n % TPB == 0          # (n + 1 - 1) % TPB == 0
        blocks = len(self.kv.get_cache_block_ids(rid))
        if boundary and self.kv.num_free_blocks == 0:
            self._expect_rejected(lambda: self.kv.add_token(rid))
            return
        free = self.kv.num_free_blocks
        self.kv.add_token(rid)
        r.add_new_token(1000 + n % 5)
        self._mutated()
        self.seq[rid] = n + 1
        assert len(self.kv.get_cache_block_ids(rid)) == blocks + (1 if boundary else 0)
        assert self.kv.num_free_blocks == free - (1 if boundary else 0)

    @precondition(lambda self: bool(self.seq))
    @rule(data=st.data(), store=st.booleans())
    def remove_sequence(self, data, store):
        rid = data.draw(st.sampled_from(sorted(self.seq)))
        ids = self.kv.get_cache_block_ids(rid).tolist()
        refs = {b: self.kv.ref_count(b) for b in ids}
        free = self.kv.num_free_blocks
        self.kv.remove_sequence(rid, self.reqs[rid] if store else None)
        self._mutated()
        del self.seq[rid]
        for b in ids:
            assert self.kv.ref_count(b) == refs[b] - 1
        released = [b for b in ids if refs[b] == 1]
        assert self.kv.num_free_blocks == free + len(released)
        # Released in reverse allocation order, at the back of the queue.
        q = self.kv.free_queue(0).tolist()
        if released:
            assert q[-len(released):] == released[::-1]
        assert not self.kv.has_sequence(rid)

    @precondition(lambda self: bool(self.reqs))
    @rule(data=st.data())
    def remove_request(self, data):
        rid = data.draw(st.sampled_from(sorted(self.reqs)))
        r = self.reqs[rid]
        if rid in self.seq:
            self._expect_rejected(lambda: self.t.remove_request(r))
            return
        view = r.tokens
        expected = view.tolist()
        self.t.remove_request(r)
        del self.reqs[rid]
        assert not r.is_valid and rid not in self.t
        assert view.tolist() == expected

    @rule()
    def start_scheduling(self):
        assert self.kv.start_scheduling() == self.kv.num_free_blocks
        assert self.kv.scheduling_free_blocks == self.kv.num_free_blocks
        self.sched = set()
        self.sched_free0 = self.kv.num_free_blocks

    @precondition(lambda self: self.sched is not None and bool(self.seq))
    @rule(data=st.data())
    def scheduling_remove_sequence(self, data):
        rid = data.draw(st.sampled_from(sorted(self.seq)))
        if rid in self.sched:
            with pytest.raises(ValueError, match="already removed"):
                self.kv.scheduling_remove_sequence(rid)
            return
        free = self.kv.num_free_blocks
        got = self.kv.scheduling_remove_sequence(rid)
        self.sched.add(rid)
        # Expected: start value + blocks all of whose holders are now scheduling-removed.
        holders = {}
        for s in self.seq:
            for b in self.kv.get_cache_block_ids(s).tolist():
                holders.setdefault(b, set()).add(s)
        freed = sum(1 for hs in holders.values() if hs <= self.sched)
        assert got == self.sched_free0 + freed
        assert self.kv.scheduling_free_blocks == got
        assert self.kv.num_free_blocks == free        # real state untouched
        assert self.kv.scheduling_has_free_blocks(got) and not self.kv.scheduling_has_free_blocks(got + 1)

    # invalid operations -------------------------------------------------

    @precondition(lambda self: bool(self.seq))
    @rule(data=st.data())
    def duplicate_add_sequence(self, data):
        rid = data.draw(st.sampled_from(sorted(self.seq)))
        self._expect_rejected(lambda: self.kv.add_sequence(rid, 1, 1, self.reqs[rid]))

    @precondition(lambda self: any(r not in self.seq for r in self.reqs))
    @rule(data=st.data(), which=st.integers(0, 3))
    def invalid_without_sequence(self, data, which):
        rid = data.draw(st.sampled_from(self._no_seq()))
        r = self.reqs[rid]
        calls = [
            lambda: self.kv.add_token(rid),
            lambda: self.kv.remove_sequence(rid),
            lambda: self.kv.store_context_blocks(r),
            lambda: self.kv.add_sequence(rid, 1, 2, r),      # beam width 2
        ]
        self._expect_rejected(calls[which])

    @rule()
    def invalid_unknown_id(self):
        self._expect_rejected(lambda: self.kv.add_sequence(10**9, 1, 1))
        self._expect_rejected(lambda: self.kv.scheduling_remove_sequence(10**9))

    @rule()
    def invalid_batch_dtype(self):
        arr = np.array([r.slot for r in self.reqs.values()], dtype=np.float64)
        self._expect_rejected(lambda: self.kv.get_remaining_blocks_to_completion_batch(arr), TypeError)

    @precondition(lambda self: bool(self.reqs))
    @rule()
    def estimates_agree_with_batch(self):
        rs = list(self.reqs.values())
        arr = np.array([r.slot for r in rs], dtype=np.int32)
        single = [self.kv.get_remaining_blocks_to_completion(r) for r in rs]
        assert self.kv.get_remaining_blocks_to_completion_batch(arr).tolist() == single
        assert all(x >= 0 for x in single)

    # ------------------------------------------------------------------ invariants

    @invariant()
    def pool_is_consistent(self):
        kv = self.kv
        kv.check_invariants()
        total = NUM_BLOCKS + self.SECONDARY
        assert kv.max_num_blocks == total
        assert kv.num_free_blocks + kv.num_used_blocks == total
        assert 0 <= kv.num_free_blocks <= NUM_BLOCKS
        q0, q1 = kv.free_queue(0).tolist(), kv.free_queue(1).tolist()
        assert len(q0) == kv.num_free_blocks and len(q1) == kv.num_free_secondary_blocks
        assert len(set(q0)) == len(q0) and len(set(q1)) == len(q1)
        assert not set(q0) & set(q1)
        refs = [kv.ref_count(b) for b in range(total)]
        assert all(x >= 0 for x in refs)
        # Every block is either free (in exactly one queue) or referenced.
        for b in range(total):
            assert (refs[b] == 0) == (b in set(q0) or b in set(q1))
        assert all(kv.is_primary(b) for b in q0) and not any(kv.is_primary(b) for b in q1)
        # References equal sequence holdings; block counts follow the token counts.
        held = 0
        for rid, n in self.seq.items():
            ids = kv.get_cache_block_ids(rid).tolist()
            assert len(ids) == ceil_div(n, TPB)
            assert kv.get_sequence_num_tokens(rid) == n
            assert all(kv.is_primary(b) for b in ids)
            held += len(ids)
        assert sum(refs) == held
        if not self.REUSE:
            assert kv.num_cached_blocks == 0

    def teardown(self):
        for rid in list(self.seq):
            self.kv.remove_sequence(rid, self.reqs[rid])
        self.seq.clear()
        self.kv.check_invariants()
        assert len(self.kv.free_queue(0)) == NUM_BLOCKS == self.kv.num_free_blocks
        assert len(self.kv.free_queue(1)) == self.SECONDARY
        assert all(self.kv.ref_count(b) == 0 for b in range(NUM_BLOCKS + self.SECONDARY))


SETTINGS = settings(max_examples=150, stateful_step_count=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


class KVMachineReuse(KVMachine):
    REUSE = True


class KVMachineNoReuse(KVMachine):
    REUSE = False


class KVMachineSecondary(KVMachine):
    REUSE = True
    SECONDARY = 3


TestKVCacheReuse = KVMachineReuse.TestCase
TestKVCacheReuse.settings = SETTINGS
TestKVCacheNoReuse = KVMachineNoReuse.TestCase
TestKVCacheNoReuse.settings = SETTINGS
TestKVCacheSecondary = KVMachineSecondary.TestCase
TestKVCacheSecondary.settings = SETTINGS
