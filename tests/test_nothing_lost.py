"""tests/test_nothing_lost.py: a call that fails half-way leaves the request and the cache as before.

For each multi-step operation the failure is provoked where a naive implementation would already
have changed something (blocks claimed, the reuse tree cut, a chunk size written, a list entry
unmarked), and the whole observable state is compared with a deep snapshot taken before the call:
every table column of every slot, the tokens, the list order, the free queues in eviction order,
the reuse tree (cached flags and parents), ref counts, each sequence's block ids and token count,
and the cache statistics. After the failure, the operation is shown to still work once its cause
is gone (nothing was lost on the way).

`SimExecutor.apply` validates the whole step before it changes anything (design.md, "Differences
of behaviour" 2).
"""

from __future__ import annotations

import numpy as np
import pytest

import tllm_sched as ts
from tllm_sched.config import ChunkingConfig, SchedulerConfig
from tllm_sched.scheduler import BACKENDS, Scheduler
from utils import full_snapshot, toks

S = ts.LlmRequestState
I32 = lambda *a: np.array(a, dtype=np.int32)  # noqa: E731
E32 = I32()


class World:
    """A table, a self cache, an active list and an executor, with deep snapshots."""

    def __init__(self, tpb=4, blocks=6, max_seq=64, capacity=8, cross_blocks=None, **kv_kw):
        self.t = ts.RequestTable(capacity)
        self.kv = ts.KVCacheManager(self.t, tpb, blocks, max_seq, **kv_kw)
        self.cross = (None if cross_blocks is None
                      else ts.KVCacheManager(self.t, tpb, cross_blocks, max_seq, cross_kv=True))
        self.rl = ts.RequestList(self.t)
        self.ex = ts.SimExecutor(self.t, self.kv, self.cross, 1000)
        self.reqs = []

    def add(self, rid, tokens, max_new=4, **kw):
        r = self.t.add_request(rid, tokens, max_new, **kw)
        self.reqs.append(r)
        return r

    def snap(self):
        s = full_snapshot(self.t, self.kv, [self.rl], self.reqs)
        if self.cross is not None:
            s["cross"] = full_snapshot(self.t, self.cross, [], self.reqs)["kv"]
        s["tokens_appended"] = self.ex.tokens_appended
        return s

    def assert_fails_cleanly(self, call, exc=ValueError, match=None):
        before = self.snap()
        with pytest.raises(exc, match=match) as ei:
            call()
        assert str(ei.value).strip()
        self.kv.check_invariants()
        assert self.snap() == before
        return ei.value


# ============================================================================= add_sequence


def test_add_sequence_without_reuse_no_free_block():
    w = World(blocks=4)
    a = w.add(1, toks(8))
    w.kv.add_sequence(1, 8, 1, a)                       # 2 of 4 blocks
    b = w.add(2, toks(12, 100))
    w.assert_fails_cleanly(lambda: w.kv.add_sequence(2, 12, 1, b), match="needs 3 free blocks, 2 free")
    w.kv.remove_sequence(1)
    w.kv.add_sequence(2, 12, 1, b)                       # nothing lost: it works once blocks are free
    assert len(w.kv.get_cache_block_ids(2)) == 3


def _cache_prefix(w, rid, tokens):
    """Runs a request through add_sequence + remove_sequence(store): its blocks become cached."""
    r = w.add(rid, tokens)
    w.kv.add_sequence(rid, len(tokens), 1, r)
    w.kv.remove_sequence(rid, r)
    return r


def _hold(w, rid, n_blocks, tpb=4):
    """A request holding n fresh blocks of unique content (takes them from the queue front)."""
    r = w.add(rid, toks(n_blocks * tpb, 10_000 + 100 * rid))
    w.kv.add_sequence(rid, n_blocks * tpb, 1, r)
    return r


@pytest.mark.parametrize("secondary", [0, 2])
def test_add_sequence_reuse_full_matches_then_no_free_block(secondary):
    # A's 4 full blocks are cached; a blocker takes the free non-cached ones. C shares A's first two
    # blocks and then needs three fresh ones: it would claim the two cached blocks, evict more
    # cached blocks for fresh ones, and run out mid-way.
    w = World(blocks=6, enable_block_reuse=True, num_secondary_blocks=secondary)
    _cache_prefix(w, 1, toks(16) + [99])               # 5 blocks, 4 full ones stored
    blocker = _hold(w, 2, 2)
    assert w.kv.num_free_blocks == 4 and w.kv.num_cached_blocks >= 4
    c = w.add(3, toks(8) + toks(12, 300))              # 20 tokens: 2 matched + 3 new blocks
    w.assert_fails_cleanly(lambda: w.kv.add_sequence(3, 20, 1, c), match="free blocks")
    assert c.prepopulated_prompt_len == 0 and c.context_current_position == 0
    w.kv.remove_sequence(2)
    w.t.remove_request(blocker)
    w.reqs.remove(blocker)
    w.kv.add_sequence(3, 20, 1, c)                      # the cached prefix is still there
    assert c.prepopulated_prompt_len == 8
    w.kv.check_invariants()


@pytest.mark.parametrize("copy_on_partial", [True, False])
def test_add_sequence_reuse_partial_match_then_no_free_block(copy_on_partial):
    # D matches A's first block fully and its second block partially (copy or take-over), then
    # needs more fresh blocks than are free.
    w = World(blocks=6, enable_block_reuse=True, copy_on_partial_reuse=copy_on_partial)
    _cache_prefix(w, 1, toks(9))                        # blocks [0..3], [4..7] cached, [8] partial
    _hold(w, 2, 3)
    free = w.kv.num_free_blocks
    d = w.add(4, toks(6) + toks(14, 500))               # 20 tokens = 5 blocks; block 2 partial match
    w.assert_fails_cleanly(lambda: w.kv.add_sequence(4, 20, 1, d), match="free blocks")
    assert w.kv.num_free_blocks == free
    w.kv.remove_sequence(2)
    w.kv.add_sequence(4, 20, 1, d)
    assert d.prepopulated_prompt_len >= 4
    w.kv.check_invariants()


def test_add_sequence_reuse_partial_leaf_take_over_then_no_free_block():
    # The partially matched block is an unreferenced leaf: without copy-on-partial-reuse it is taken
    # over (detached from the tree); the failure must put nothing of that in motion.
    w = World(blocks=5, enable_block_reuse=True, copy_on_partial_reuse=False)
    _cache_prefix(w, 1, toks(7) + [42])                 # [0..3] full, [4,5,6] partial leaf
    _hold(w, 2, 3)
    e = w.add(5, toks(6) + toks(10, 700))               # 16 tokens: full, partial, 2 fresh
    w.assert_fails_cleanly(lambda: w.kv.add_sequence(5, 16, 1, e), match="free blocks")
    w.kv.remove_sequence(2)
    w.kv.add_sequence(5, 16, 1, e)
    assert e.prepopulated_prompt_len > 0


def test_add_sequence_secondary_onboarding_then_no_free_block():
    # Cached blocks offloaded to the secondary pool must be onboarded (each takes a primary block).
    w = World(blocks=4, enable_block_reuse=True, num_secondary_blocks=4)
    _cache_prefix(w, 1, toks(12) + [1])                 # 3 full blocks cached in primary
    _hold(w, 2, 4)                                      # evicting them offloads them to secondary
    assert w.kv.num_free_blocks == 0 and w.kv.num_cached_blocks == 3
    assert not any(w.kv.is_primary(b) for b in range(w.kv.max_num_blocks) if w.kv.is_cached(b))
    f = w.add(6, toks(12) + [2])
    w.assert_fails_cleanly(lambda: w.kv.add_sequence(6, 13, 1, f), match="free blocks")
    w.kv.remove_sequence(2)
    w.kv.add_sequence(6, 13, 1, f)
    assert f.prepopulated_prompt_len > 0                 # onboarding may evict some of the prefix
    w.kv.check_invariants()


# ============================================================================= add_token


def test_add_token_at_block_boundary_without_free_block():
    w = World(blocks=2)
    a, b = w.add(1, toks(4)), w.add(2, toks(4, 50))
    w.kv.add_sequence(1, 4, 1, a)
    w.kv.add_sequence(2, 4, 1, b)
    w.assert_fails_cleanly(lambda: w.kv.add_token(1), match="none free")
    assert w.kv.get_sequence_num_tokens(1) == 4
    w.kv.remove_sequence(2)
    w.kv.add_token(1)
    assert w.kv.get_sequence_num_tokens(1) == 5 and len(w.kv.get_cache_block_ids(1)) == 2


# ============================================================================= batch setters


@pytest.mark.parametrize("bad", ["negative size", "generation request", "dead slot", "length mismatch"])
def test_set_context_chunk_sizes_one_bad_entry(bad):
    w = World()
    good = [w.add(i, toks(12), max_new=2) for i in range(3)]
    gen = w.add(9, toks(5), state=S.GENERATION_IN_PROGRESS)
    dead = w.add(10, toks(3))
    dead_slot = dead.slot
    w.t.remove_request(dead)
    w.reqs.remove(dead)
    slots = [r.slot for r in good]
    sizes = [4, 4, 4]
    if bad == "negative size":
        args = (I32(*slots, good[0].slot), I32(*sizes, -1))
    elif bad == "generation request":
        args = (I32(*slots, gen.slot), I32(*sizes, 1))
    elif bad == "dead slot":
        args = (I32(*slots, dead_slot), I32(*sizes, 1))
    else:
        args = (I32(*slots), I32(*sizes, 1))
    w.assert_fails_cleanly(lambda: w.t.set_context_chunk_sizes(*args))
    assert [r.context_chunk_size for r in good] == [12, 12, 12]
    w.t.set_context_chunk_sizes(I32(*slots), I32(*sizes))
    assert [r.context_chunk_size for r in good] == [4, 4, 4]


@pytest.mark.parametrize("bad", ["too many", "zero", "dead slot"])
def test_discard_draft_tokens_one_bad_entry(bad):
    w = World()
    good = [w.add(i, toks(6), num_draft_tokens=3) for i in range(3)]
    slots = [r.slot for r in good]
    if bad == "too many":
        args = (I32(*slots, good[1].slot), I32(1, 2, 3, 4))
    elif bad == "zero":
        args = (I32(*slots), I32(1, 0, 1))
    else:
        args = (I32(*slots, 7), I32(1, 1, 1, 1))
    w.assert_fails_cleanly(lambda: w.t.discard_draft_tokens(*args))
    assert [r.num_draft_tokens for r in good] == [3, 3, 3]
    w.t.discard_draft_tokens(I32(*slots), I32(1, 2, 3))
    assert [r.num_draft_tokens for r in good] == [2, 1, 0]


@pytest.mark.parametrize("bad", ["discard too many", "negative discard", "discards length", "discards dtype"])
def test_set_context_chunk_sizes_with_discards_one_bad_entry(bad):
    """Chunk sizes and draft discards in one call: a bad discard anywhere changes nothing."""
    w = World()
    good = [w.add(i, toks(12), max_new=2, num_draft_tokens=3) for i in range(3)]
    slots, sizes = I32(*[r.slot for r in good]), I32(4, 4, 4)
    discards = {"discard too many": I32(1, 4, 0), "negative discard": I32(0, -1, 0),
                "discards length": I32(1, 1), "discards dtype": np.array([1, 1, 1], dtype=np.int64)}[bad]
    exc = TypeError if bad == "discards dtype" else ValueError
    w.assert_fails_cleanly(lambda: w.t.set_context_chunk_sizes(slots, sizes, discards), exc)
    assert [(r.context_chunk_size, r.num_draft_tokens) for r in good] == [(12, 3)] * 3
    w.t.set_context_chunk_sizes(slots, sizes, I32(1, 3, 0))  # 0: nothing discarded
    assert [(r.context_chunk_size, r.num_draft_tokens) for r in good] == [(4, 2), (4, 0), (4, 3)]


def test_set_ctx_requests_chunk_size_with_a_generation_request():
    w = World()
    ctx = [w.add(i, toks(20), num_draft_tokens=2) for i in range(3)]
    gen = w.add(5, toks(4), state=S.GENERATION_IN_PROGRESS)
    slots = I32(*[r.slot for r in ctx], gen.slot)
    w.assert_fails_cleanly(lambda: ts.set_ctx_requests_chunk_size(
        w.t, slots, ts.ContextChunkingPolicy.FIRST_COME_FIRST_SERVED, 10, 4, None), match="not in a context state")
    assert [r.context_chunk_size for r in ctx] == [20, 20, 20]
    assert [r.num_draft_tokens for r in ctx] == [2, 2, 2]


@pytest.mark.parametrize("backend", BACKENDS)
def test_scheduler_chunk_setter_with_a_generation_request(backend):
    w = World()
    ctx = [w.add(i, toks(20), num_draft_tokens=2) for i in range(3)]
    gen = w.add(5, toks(4), state=S.GENERATION_IN_PROGRESS)
    cfg = SchedulerConfig("GUARANTEED_NO_EVICT", 4, max_num_tokens=10,
                          chunking=ChunkingConfig("FIRST_COME_FIRST_SERVED", 4))
    sch = Scheduler(cfg, w.t, w.kv, backend=backend)
    slots = I32(*[r.slot for r in ctx], gen.slot)
    w.assert_fails_cleanly(lambda: sch.set_ctx_requests_chunk_size(slots))


# ============================================================================= lists and table


def test_remove_slots_with_a_removed_slot():
    w = World()
    rs = [w.add(i, toks(3)) for i in range(4)]
    for r in rs:
        w.rl.append(r)
    gone = w.add(9, toks(3))
    gone_slot = gone.slot
    w.t.remove_request(gone)
    w.reqs.remove(gone)
    w.assert_fails_cleanly(lambda: w.rl.remove_slots(I32(rs[0].slot, rs[2].slot, gone_slot)),
                           match="holds no live request")
    assert all(r in w.rl for r in rs)
    # Membership counts were not touched: a listed request still cannot leave the table ...
    with pytest.raises(ValueError, match="still in a RequestList"):
        w.t.remove_request(rs[0])
    # ... and the valid removal works, keeping the order of the rest.
    w.rl.remove_slots(I32(rs[0].slot, rs[2].slot))
    assert np.array(w.rl.slots).tolist() == [rs[1].slot, rs[3].slot]
    w.t.remove_request(rs[0])


def test_add_request_failures_change_nothing():
    w = World(capacity=2)
    a = w.add(1, toks(3))
    for call in (
        lambda: w.t.add_request(1, toks(3), 2),                                   # duplicate id
        lambda: w.t.add_request(2, toks(3), 2, input_token_extra_ids=[1, 2]),     # one extra id short
        lambda: w.t.add_request(2, toks(3), 2, beam_width_schedule=[2, 0]),
        lambda: w.t.add_request(2, np.arange(3, dtype=np.float32), 2),            # not integers
        lambda: w.t.add_request(2, np.array([1, 2**31], dtype=np.int64), 2),      # beyond int32
    ):
        w.assert_fails_cleanly(call, exc=(ValueError, TypeError))
    b = w.add(2, toks(3))
    w.assert_fails_cleanly(lambda: w.t.add_request(3, toks(3), 2), match="full")
    assert {a.slot, b.slot} == {0, 1}


def test_remove_request_failures_change_nothing():
    w = World()
    a = w.add(1, toks(5))
    w.kv.add_sequence(1, 5, 1, a)
    w.rl.append(a)
    w.assert_fails_cleanly(lambda: w.t.remove_request(a), match="sequence")
    w.kv.remove_sequence(1)
    w.assert_fails_cleanly(lambda: w.t.remove_request(a), match="RequestList")
    w.rl.remove(a)
    w.t.remove_request(a)
    assert len(w.t) == 0


def test_kv_calls_with_a_mismatched_request_change_nothing():
    w = World(enable_block_reuse=True)
    a, b = w.add(1, toks(6)), w.add(2, toks(6, 40))
    w.kv.add_sequence(1, 6, 1, a)
    w.assert_fails_cleanly(lambda: w.kv.add_sequence(2, 6, 1, a), match="does not match")
    w.assert_fails_cleanly(lambda: w.kv.remove_sequence(1, b), match="does not match")


# ============================================================================= scheduling


@pytest.mark.parametrize("backend", BACKENDS)
def test_failed_scheduling_pass_changes_nothing(backend):
    # A context that exceeds max_context_length without chunking is a SchedulingError, raised after
    # the capacity pass and part of the micro-batch walk have looked at everything else.
    w = World(blocks=16)
    a = w.add(1, toks(4))
    g = w.add(2, toks(4, 30))
    w.kv.add_sequence(2, 4, 1, g)
    g.set_state(S.GENERATION_IN_PROGRESS)
    long = w.add(3, toks(12, 60))
    for r in (a, g, long):
        w.rl.append(r)
    sch = Scheduler(SchedulerConfig("MAX_UTILIZATION", 4, max_context_length=8), w.t, w.kv, backend=backend)
    w.assert_fails_cleanly(lambda: sch.schedule(w.rl), exc=ts.SchedulingError, match="max_context_length")
    w.rl.remove(long)
    out = sch.schedule(w.rl)
    assert sorted(out.context.tolist() + out.generation.tolist()) == sorted([a.slot, g.slot])


# ============================================================================= SimExecutor.apply


def test_apply_failing_on_its_first_request_changes_nothing():
    w = World(blocks=2)
    a = w.add(1, toks(12))                               # needs 3 blocks
    w.assert_fails_cleanly(lambda: w.ex.apply(E32, E32, I32(a.slot)), match="free blocks")


def test_apply_with_a_dead_slot_changes_nothing():
    w = World()
    a = w.add(1, toks(4))
    b = w.add(2, toks(4))
    dead = b.slot
    w.t.remove_request(b)
    w.reqs.remove(b)
    w.assert_fails_cleanly(lambda: w.ex.apply(E32, E32, I32(a.slot, dead)), match="no live request")
    w.assert_fails_cleanly(lambda: w.ex.apply(I32(a.slot), E32, I32(dead)), match="no live request")


APPLY_NOT_ATOMIC = "bug: SimExecutor.apply is not all-or-nothing: it changes state before the failing request"


def test_apply_second_context_without_blocks():
    w = World(blocks=3)
    a = w.add(1, toks(8), max_new=3)                     # 2 blocks
    b = w.add(2, toks(8, 50), max_new=3)                 # 2 more: only 1 left
    w.assert_fails_cleanly(lambda: w.ex.apply(E32, E32, I32(a.slot, b.slot)), match="free blocks")


def test_apply_second_generation_without_block():
    w = World(blocks=3)
    a, b = w.add(1, toks(3), max_new=8), w.add(2, toks(4, 50), max_new=8)
    w.ex.apply(E32, E32, I32(a.slot, b.slot))            # contexts: 1 block each; a: 4 tokens, b: 5
    _hold(w, 3, 1)                                       # the last free block
    w.assert_fails_cleanly(lambda: w.ex.apply(E32, E32, I32(a.slot, b.slot)), match="none free")


def test_apply_pause_then_failing_execute():
    w = World(blocks=3)
    a = w.add(1, toks(4), max_new=8)
    w.ex.apply(E32, E32, I32(a.slot))                    # a: generation, 1 block
    c = w.add(2, toks(16, 50))                           # needs 4 blocks: never fits
    w.assert_fails_cleanly(lambda: w.ex.apply(I32(a.slot), E32, I32(c.slot)), match="free blocks")


def test_apply_cross_cache_fails_after_self_cache():
    w = World(blocks=8, cross_blocks=1)
    a = w.add(1, toks(4), encoder_output_len=12)         # cross needs 3 blocks of 4
    w.assert_fails_cleanly(lambda: w.ex.apply(E32, E32, I32(a.slot)), match="free blocks")


def test_apply_generation_past_capacity_keeps_kv_token():
    w = World(blocks=8)
    a = w.add(1, toks(3), max_new=2, num_draft_tokens=2)  # capacity 3 + 2 + 2 = 7 tokens
    w.ex.apply(E32, E32, I32(a.slot))                     # context: 4 tokens
    a.add_new_token(9)                                    # 5 = prompt + max_new: completion is now skipped
    w.ex.apply(E32, E32, I32(a.slot))                     # 6
    w.ex.apply(E32, E32, I32(a.slot))                     # 7 = capacity
    w.assert_fails_cleanly(lambda: w.ex.apply(E32, E32, I32(a.slot)), match="capacity")


def test_apply_duplicate_slot_loses_a_completion():
    w = World(blocks=8)
    a = w.add(1, toks(3), max_new=2)
    w.ex.apply(E32, E32, I32(a.slot))                     # context + first token
    w.assert_fails_cleanly(lambda: w.ex.apply(E32, E32, I32(a.slot, a.slot)))
