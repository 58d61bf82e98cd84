"""tests/test_kv_cache_stateful.py: random operation sequences against KVCacheManager.

Hypothesis drives adds/removes/stores/tokens/scheduling passes and invalid calls over prompts that
share prefixes (whole blocks, or diverging inside a block), twins that arrive together, and pool
pressure. After every step the C++ cache must equal tests/kv_model.py, an independent model of
the block manager written from kvcache.md: block ids per sequence (which show copy versus
take-over: a take-over keeps the matched block's id and detaches it, a copy takes the LRU front),
the prepopulated length, the pre-check count of a refused add_sequence, free lists in LRU order
(both levels), ref counts, tree parents, storage levels, statistics and first-new-block keys. The
pool invariants (kvcache.md §1.3, §2.1) are checked too, and at teardown every block is free.
"""

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import tllm_sched as ts
from kv_model import KVModel, Rejected, ceil_div
from utils import kv_snapshot

TPB = 4
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
# A prompt: the first `cut` tokens of a base, then a suffix. The base is one of PREFIXES, or the
# tokens (with the LoRA id and extra ids) of a request with a live sequence (source 4, 5: its
# blocks are held) or of a recent request (6, 7: its blocks are often free and cached). Prompts
# then diverge anywhere, so sibling blocks with equal leading tokens (ties of the partial match)
# are common. Prefix prompts draw a LoRA id and extra ids (all one value); a prompt with extra ids
# never shares a block with one without them.
PROMPT = st.tuples(st.integers(0, len(PREFIXES) + 3), st.integers(1, 20), st.lists(st.integers(0, 3), max_size=10),
                   st.integers(1, 12), st.sampled_from([None] * 4 + [1]), st.sampled_from([None] * 5 + [0, 1]))
STATS = ("alloc_total_blocks", "alloc_new_blocks", "reused_blocks", "missed_blocks")


def _extras(extras, n):
    """Extra ids for n tokens that start like `extras` (None: no extra ids); the new ones are 0."""
    return None if extras is None else (extras + [0] * n)[:n]


class KVMachine(RuleBasedStateMachine):
    REUSE = True
    SECONDARY = st.just(0)
    # Small pools: evicting cached blocks (and interior ones, cutting their subtrees) is common.
    NUM_BLOCKS = st.sampled_from([8, 12, 16])
    STORE_CONTEXT = True

    def __init__(self):
        super().__init__()
        self.t = ts.RequestTable(CAPACITY)
        self.reqs = {}          # rid -> LlmRequest
        self.seq = {}           # rid -> KV token count (live sequences only)
        self.next_id = 0
        self.fillers = set()    # rids of pressure() prompts
        self.sched = None       # set of rids scheduling-removed in the current pass, None: no pass
        self.sched_free0 = None

    @initialize(data=st.data())
    def make_cache(self, data):
        self.num_blocks = data.draw(self.NUM_BLOCKS, label="num_blocks")
        self.secondary = data.draw(self.SECONDARY, label="num_secondary_blocks")
        partial = data.draw(st.booleans(), label="enable_partial_reuse") if self.REUSE else True
        copy = data.draw(st.booleans(), label="copy_on_partial_reuse") if self.REUSE else True
        self.kv = ts.KVCacheManager(self.t, TPB, self.num_blocks, MAX_SEQ_LEN, enable_block_reuse=self.REUSE,
                                    enable_partial_reuse=partial, copy_on_partial_reuse=copy,
                                    num_secondary_blocks=self.secondary)
        self.model = KVModel(TPB, self.num_blocks, reuse=self.REUSE, partial=partial, copy=copy, secondary=self.secondary)
        # Start from a warm cache (a tree with live and finished prompts) so that even short
        # examples walk it.
        for prompt, finished in data.draw(st.lists(st.tuples(PROMPT, st.booleans()), min_size=2, max_size=6), label="warm"):
            rid = self._new_request(prompt)
            if self._add_sequence(rid, 0):
                self._store_context_blocks(rid)
                if finished:
                    self._remove_sequence(rid, True)

    # ------------------------------------------------------------------ helpers

    def _mutated(self):
        self.sched = None

    def _no_seq(self):
        return sorted(r for r in self.reqs if r not in self.seq)

    def _expect_rejected(self, call, exc=ValueError, match=None):
        before = kv_snapshot(self.kv, list(self.reqs))
        n = len(self.t)
        with pytest.raises(exc, match=match):
            call()
        assert kv_snapshot(self.kv, list(self.reqs)) == before
        assert len(self.t) == n

    # ------------------------------------------------------------------ rules

    @precondition(lambda self: len(self.reqs) < CAPACITY)
    @rule(prompt=PROMPT, then=st.sampled_from(["", "add", "add+store"]))
    def add_request(self, prompt, then):
        rid = self._new_request(prompt)
        # The common path in one step (more reuse walks per example): allocate the prompt, and
        # store its full blocks as after the forward step.
        if then and self._add_sequence(rid, 0) and then == "add+store":
            self._store_context_blocks(rid)

    @precondition(lambda self: len(self.reqs) < CAPACITY - 1)
    @rule(prompt=PROMPT, longer=st.integers(1, 2 * TPB), first_finishes=st.booleans())
    def add_twins(self, prompt, longer, first_finishes):
        """Two requests with one prompt, both allocated before either stores (kvcache.md §2.4: they
        arrive together). The second, `longer` tokens longer, stores its tail under the first one's
        blocks, so it holds blocks whose tree parents it does not hold; once the first finishes,
        those parents are free and can be offloaded while their children are held."""
        tokens, extras, lora, max_new = self._prompt(prompt)
        first = self._add_request(tokens, extras, lora, max_new)
        tail = [1000 + i % 4 for i in range(longer)]
        second = self._add_request(tokens + tail, None if extras is None else extras + [0] * longer, lora, max_new)
        if self._add_sequence(first, 0) and self._add_sequence(second, 0):
            self._store_context_blocks(first)
            self._store_context_blocks(second)
            if first_finishes:
                self._remove_sequence(first, True)

    @precondition(lambda self: len(self.reqs) < CAPACITY - 2)
    @rule(prompt=PROMPT, diverge=st.integers(1, TPB - 1), second_finishes=st.booleans(), stop=st.integers(1, TPB - 1))
    def add_siblings(self, prompt, diverge, second_finishes, stop):
        """Two stored prompts that diverge `diverge` tokens into a block (the first finished: cached
        and free; the second maybe still held), then a third that leaves the shared tokens after
        `stop` of them: its key there matches both siblings' blocks equally far, a tie of the
        partial match (the earliest stored wins). The third is cancelled after its allocation."""
        tokens, extras, lora, max_new = self._prompt(prompt)
        shared = tokens[:len(tokens) // TPB * TPB] + [900 + j for j in range(diverge)]
        for i, finishes in enumerate((True, second_finishes)):
            # One token past the block: (tokens - 1) end with it, so it is stored as a leaf.
            own = [2000 + 100 * i + j for j in range(TPB - diverge + 1)]
            rid = self._add_request(shared + own, _extras(extras, len(shared) + len(own)), lora, max_new)
            if self._add_sequence(rid, 0):
                self._store_context_blocks(rid)
                if finishes:
                    self._remove_sequence(rid, True)
        stop = len(shared) - diverge + min(stop, diverge)
        rid = self._add_request(shared[:stop] + [1000, 1001], _extras(extras, stop + 2), lora, max_new)
        if self._add_sequence(rid, 0):
            self._remove_sequence(rid, False)

    @precondition(lambda self: len(self.reqs) < CAPACITY and self.kv.num_free_blocks > 0)
    @rule(blocks=st.integers(1, MAX_SEQ_LEN // TPB), stays=st.booleans())
    def pressure(self, blocks, stays):
        """An unrelated prompt takes LRU front blocks: cached blocks there are recycled, or offloaded
        to the host pool (to be onboarded by a later match). If it stays, the pool is left tight,
        where a pre-check count that is off by one shows."""
        n = min(blocks, self.kv.num_free_blocks) * TPB
        rid = self._add_request([5000 + 100 * self.next_id + i for i in range(n)], None, None, 1)
        self.fillers.add(rid)
        assert self._add_sequence(rid, 0)
        if not stays:
            self._remove_sequence(rid, False)
            self.t.remove_request(self.reqs.pop(rid))
            self.model.remove_request(rid)

    def _new_request(self, prompt):
        return self._add_request(*self._prompt(prompt))

    def _prompt(self, prompt):
        """(tokens, extra ids or None, LoRA id, max new tokens) of a PROMPT draw."""
        source, cut, suffix, max_new, lora, extra = prompt
        recent = [r for r in sorted(self.reqs) if r not in self.fillers]   # fillers share nothing
        live = [r for r in recent if r in self.seq]
        k = source - len(PREFIXES)
        bases = ((live if k < 2 else recent)[-4:] or recent[-4:]) if k >= 0 else []
        if bases:
            base = self.model.requests[bases[-1 - k % len(bases)]]
            lora, items = base["lora"], base["items"][:cut]
            extra = None if items[0][1] is None else items[0][1]
            tokens = [tok for tok, _ in items] + [1000 + x for x in suffix]
            extras = None if extra is None else [e for _, e in items] + [extra] * len(suffix)
        else:
            tokens = PREFIXES[source % len(PREFIXES)][:cut] + [1000 + x for x in suffix]
            extras = None if extra is None else [extra] * len(tokens)
        return tokens, extras, lora, max_new

    def _add_request(self, tokens, extras, lora, max_new):
        rid = self.next_id
        self.next_id += 1
        self.reqs[rid] = self.t.add_request(rid, tokens, max_new, lora_task_id=lora, input_token_extra_ids=extras)
        self.model.add_request(rid, tokens, lora, extras)
        return rid

    @precondition(lambda self: any(r not in self.seq for r in self.reqs))
    @rule(data=st.data(), shorter=st.sampled_from([0, 0, 0, 1, 2]))
    def add_sequence(self, data, shorter):
        self._add_sequence(data.draw(st.sampled_from(self._no_seq())), shorter)

    def _add_sequence(self, rid, shorter):
        """add_sequence in the cache and the model; True if it succeeded."""
        r = self.reqs[rid]
        n = max(1, r.get_num_tokens() - shorter)
        if n > MAX_SEQ_LEN:
            self._expect_rejected(lambda: self.kv.add_sequence(rid, n, 1, r), match="exceeds max_seq_len")
            return False
        free = self.kv.num_free_blocks
        try:
            expected = self.model.add_sequence(rid, n)
        except Rejected as e:
            event("add_sequence refused")
            # The same pre-check count; the cache and the request as they were.
            self._expect_rejected(lambda: self.kv.add_sequence(rid, n, 1, r), match=re.escape(str(e)))
            assert ceil_div(n, TPB) > free      # never refused when every block could come fresh
            return False
        self.kv.add_sequence(rid, n, 1, r)
        self._mutated()
        self.seq[rid] = n
        for outcome in self.model.last_walk:
            event(f"reuse walk: {outcome}")
        assert r.prepopulated_prompt_len == expected
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
        return True

    @precondition(lambda self: self.STORE_CONTEXT and bool(self.seq))
    @rule(data=st.data())
    def store_context_blocks(self, data):
        self._store_context_blocks(data.draw(st.sampled_from(sorted(self.seq))))

    def _store_context_blocks(self, rid):
        free = self.kv.num_free_blocks
        self.kv.store_context_blocks(self.reqs[rid])
        self.model.store_context_blocks(rid)
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
        free = self.kv.num_free_blocks
        try:
            self.model.add_token(rid)
        except Rejected:
            assert boundary and free == 0
            self._expect_rejected(lambda: self.kv.add_token(rid), match="none free")
            return
        self.kv.add_token(rid)
        token = 1000 + n % 5
        r.add_new_token(token)
        self.model.add_new_token(rid, token)
        self._mutated()
        self.seq[rid] = n + 1
        assert len(self.kv.get_cache_block_ids(rid)) == blocks + (1 if boundary else 0)
        assert self.kv.num_free_blocks == free - (1 if boundary else 0)

    @precondition(lambda self: bool(self.seq))
    @rule(data=st.data(), store=st.booleans())
    def remove_sequence(self, data, store):
        self._remove_sequence(data.draw(st.sampled_from(sorted(self.seq))), store)

    def _remove_sequence(self, rid, store):
        ids = self.kv.get_cache_block_ids(rid).tolist()
        refs = {b: self.kv.ref_count(b) for b in ids}
        free = self.kv.num_free_blocks
        self.kv.remove_sequence(rid, self.reqs[rid] if store else None)
        self.model.remove_sequence(rid, store)
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
            self._expect_rejected(lambda: self.t.remove_request(r), match="KV")
            return
        view = r.tokens
        expected = view.tolist()
        self.t.remove_request(r)
        self.model.remove_request(rid)
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

    @rule(data=st.data(), which=st.integers(0, 7))
    def invalid_call(self, data, which):
        """One refused call (a single rule, so that the valid ones are drawn more often)."""
        kv = self.kv
        live, idle = sorted(self.seq), self._no_seq()
        if which == 0 and live:
            rid = data.draw(st.sampled_from(live))
            self._expect_rejected(lambda: kv.add_sequence(rid, 1, 1, self.reqs[rid]), match="already has a sequence")
        elif which <= 4 and idle:
            rid = data.draw(st.sampled_from(idle))
            r = self.reqs[rid]
            call, words = [
                (lambda: kv.add_token(rid), "no sequence"),
                (lambda: kv.remove_sequence(rid), "no sequence"),
                (lambda: kv.store_context_blocks(r), "no sequence"),
                (lambda: kv.add_sequence(rid, 1, 2, r), "beam width 2"),
            ][which - 1]
            self._expect_rejected(call, match=words)
        elif which == 5:
            self._expect_rejected(lambda: kv.add_sequence(10**9, 1, 1), match="unknown request id")
        elif which == 6:
            self._expect_rejected(lambda: kv.scheduling_remove_sequence(10**9), match="unknown request id")
        elif which == 7:
            arr = np.array([r.slot for r in self.reqs.values()], dtype=np.float64)
            self._expect_rejected(lambda: kv.get_remaining_blocks_to_completion_batch(arr), TypeError)

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
    def matches_model(self):
        kv, m = self.kv, self.model
        total = self.num_blocks + self.secondary
        assert kv.free_queue(0).tolist() == m.queue[0]        # LRU order, reverse-order release
        assert kv.free_queue(1).tolist() == m.queue[1]
        assert (kv.num_free_blocks, kv.num_free_secondary_blocks) == (len(m.queue[0]), len(m.queue[1]))
        s = kv.get_kv_cache_stats()
        assert {k: s[k] for k in STATS} == m.stats
        assert [kv.ref_count(b) for b in range(total)] == [blk.refs for blk in m.blocks]
        assert [kv.is_primary(b) for b in range(total)] == [blk.level == 0 for blk in m.blocks]
        assert [kv.tree_parent(b) for b in range(total)] == [m.tree_parent(b) for b in range(total)]
        assert kv.num_cached_blocks == m.num_cached_blocks()
        assert {rid: kv.get_cache_block_ids(rid).tolist() for rid in self.seq} == \
               {rid: sq["blocks"] for rid, sq in m.seqs.items()}
        assert {rid: kv.get_sequence_num_tokens(rid) for rid in self.seq} == \
               {rid: sq["tokens"] for rid, sq in m.seqs.items()}
        for rid, r in self.reqs.items():
            got = kv.find_new_context_block(r)
            assert (None if got is None else (got[0].tolist(), got[1])) == m.find_new_context_block(rid)

    @invariant()
    def pool_is_consistent(self):
        kv = self.kv
        kv.check_invariants()
        total = self.num_blocks + self.secondary
        assert kv.max_num_blocks == total
        assert kv.num_free_blocks + kv.num_used_blocks == total
        assert 0 <= kv.num_free_blocks <= self.num_blocks
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
        if not hasattr(self, "kv"):
            return
        for rid in list(self.seq):
            self.kv.remove_sequence(rid, self.reqs[rid])
            self.model.remove_sequence(rid, True)
        self.seq.clear()
        self.matches_model()
        self.kv.check_invariants()
        assert len(self.kv.free_queue(0)) == self.num_blocks == self.kv.num_free_blocks
        assert len(self.kv.free_queue(1)) == self.secondary
        assert all(self.kv.ref_count(b) == 0 for b in range(self.num_blocks + self.secondary))


# About 10 s in all (CPU time). No explain phase: it traces every line of the model and turns a
# 10-second shrink into minutes. The other phases (and the seed) come from the active profile.
SETTINGS = settings(max_examples=250, stateful_step_count=40, deadline=None,
                    phases=[p for p in settings.default.phases if p != Phase.explain], report_multiple_bugs=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


class KVMachineReuse(KVMachine):
    REUSE = True


class KVMachineNoReuse(KVMachine):
    REUSE = False


class KVMachineSecondary(KVMachine):
    REUSE = True
    SECONDARY = st.integers(1, 8)
    NUM_BLOCKS = st.sampled_from([6, 8])


TestKVCacheReuse = KVMachineReuse.TestCase
TestKVCacheReuse.settings = SETTINGS
TestKVCacheNoReuse = KVMachineNoReuse.TestCase
TestKVCacheNoReuse.settings = settings(SETTINGS, max_examples=100)   # no reuse walk: fewer paths
TestKVCacheSecondary = KVMachineSecondary.TestCase
TestKVCacheSecondary.settings = SETTINGS
