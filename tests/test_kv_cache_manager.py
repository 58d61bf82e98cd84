"""tests/test_kv_cache_manager.py: KVCacheManager, hand-computed (kvcache.md §1.3-§1.12, §2.1, §6).

Notation in the comments: tpb = tokens per block; "queue" = free_queue(0), front first; a key
[a..b] is the block key holding token ids a..b (prompts are built with toks(n, start) so token id
and position coincide unless stated).
"""

import numpy as np
import pytest

import tllm_sched as ts
from utils import add_req, kv_snapshot, new_kv, new_table, slots, toks

S = ts.LlmRequestState


def stats(kv):
    s = kv.get_kv_cache_stats()
    return {k: s[k] for k in ("alloc_total_blocks", "alloc_new_blocks", "reused_blocks", "missed_blocks")}


def ids(kv, rid):
    return kv.get_cache_block_ids(rid).tolist()


# --------------------------------------------------------------------------- add_sequence, no reuse


def test_add_sequence_without_reuse():
    t = new_table()
    kv = new_kv(t, 10, 20, 100)
    assert kv.free_queue(0).tolist() == list(range(20))   # initial order: ascending ids
    a, b, c = add_req(t, 1, 21), add_req(t, 2, 30), add_req(t, 3, 1)
    kv.add_sequence(1, 21, 1, a)   # ceil(21/10) = 3 blocks from the queue front: 0, 1, 2
    kv.add_sequence(2, 30, 1, b)   # ceil(30/10) = 3: 3, 4, 5
    kv.add_sequence(3, 1, 1, c)    # ceil(1/10) = 1: 6
    assert (ids(kv, 1), ids(kv, 2), ids(kv, 3)) == ([0, 1, 2], [3, 4, 5], [6])
    assert kv.num_free_blocks == 20 - 7 == 13
    assert kv.num_used_blocks == 7 and kv.max_num_blocks == 20
    assert kv.free_queue(0).tolist() == list(range(7, 20))
    assert [kv.ref_count(x) for x in range(8)] == [1] * 7 + [0]
    for query in (kv.ref_count, kv.is_cached, kv.tree_parent, kv.is_primary):
        for bad in (-1, 20):  # block ids are 0 .. max_num_blocks - 1
            with pytest.raises(IndexError, match="^block id out of range$"):
                query(bad)
    assert a.prepopulated_prompt_len == 0 and a.context_current_position == 0
    s = stats(kv)
    assert s["alloc_total_blocks"] == 7 and s["alloc_new_blocks"] == 7 and s["reused_blocks"] == 0
    # Without reuse nothing is stored, even when remove_sequence gets the request.
    kv.remove_sequence(1, a)
    assert not any(kv.is_cached(x) for x in range(20))
    assert kv.num_cached_blocks == 0
    kv.check_invariants()


def test_add_sequence_input_shorter_than_prompt_without_reuse():
    t = new_table()
    kv = new_kv(t, 4, 10, 100)
    r = add_req(t, 1, 20)
    kv.add_sequence(1, 9, 1, r)      # ceil(9/4) = 3 blocks, regardless of the 20-token prompt
    assert ids(kv, 1) == [0, 1, 2] and kv.get_sequence_num_tokens(1) == 9


# --------------------------------------------------------------------------- reuse: L mod tpb


def _donor_40(**kw):
    """tpb 10, 20 blocks. Donor A = toks(40), added then removed with store.

    A's add: keys of 39 tokens: [0..9], [10..19], [20..29], [30..38] -> 4 misses -> blocks 0,1,2,3.
    remove with store: keys of 39 tokens (partial last allowed) -> all 4 stored as a chain
    0 <- root, 1 <- 0, 2 <- 1, 3 <- 2 (3 is non-full, 9 tokens). Release in reverse: 3, 2, 1, 0 go to
    the back: queue = [4..19, 3, 2, 1, 0]; all 20 free, 4 cached.
    """
    t = new_table()
    kv = new_kv(t, 10, 20, 100, enable_block_reuse=True, **kw)
    a = add_req(t, 1, 40)
    kv.add_sequence(1, 40, 1, a)
    assert ids(kv, 1) == [0, 1, 2, 3]
    kv.remove_sequence(1, a)
    assert kv.free_queue(0).tolist() == list(range(4, 20)) + [3, 2, 1, 0]
    assert [kv.tree_parent(x) for x in range(5)] == [-1, 0, 1, 2, -2]
    assert stats(kv) == {"alloc_total_blocks": 4, "alloc_new_blocks": 4, "reused_blocks": 0, "missed_blocks": 4}
    return t, kv


def test_reuse_prompt_len_multiple_of_tpb():
    # L = 30 (L % 10 == 0). Keys use L-1 = 29 tokens: [0..9], [10..19], [20..28]; ceil(30/10) = 3 keys.
    # [0..9] exact -> block 0 (free cached: claimed back), [10..19] exact -> block 1,
    # [20..28] has no exact child under 1 (child 2 is [20..29]) -> partial match of 9 tokens with 2.
    # Block 2 is unreferenced but NOT a leaf (child 3) -> copy into a fresh block = queue front 4.
    t, kv = _donor_40()
    b = add_req(t, 2, 30)
    kv.add_sequence(2, 30, 1, b)
    assert ids(kv, 2) == [0, 1, 4]
    # prepopulated = 10 + 10 + 9 = 29 = L - 1; pos 29; chunk = min(30, 30 - 29) = 1.
    assert (b.prepopulated_prompt_len, b.context_current_position, b.context_chunk_size) == (29, 29, 1)
    assert kv.num_free_blocks == 20 - 3 == 17
    s = stats(kv)
    assert s["reused_blocks"] == 3 and s["missed_blocks"] == 4          # 3 matches (2 full + 1 partial), 0 misses
    assert s["alloc_total_blocks"] == 5 and s["alloc_new_blocks"] == 5  # only the copy target 4 was taken
    assert kv.get_kv_cache_stats()["cache_hit_rate"] == 3 / (3 + 4)   # reused / (reused + missed)
    assert kv.is_cached(2) and kv.tree_parent(2) == 1                  # the original stays cached
    assert kv.is_cached(3) and not kv.is_cached(4)
    kv.check_invariants()


def test_reuse_prompt_len_one_past_block_boundary():
    # L = 31 (L % 10 == 1). Keys of 30 tokens: [0..9], [10..19], [20..29] + an EMPTY key (the last
    # token sits alone in block 4) -> 4 keys = ceil(31/10). Three exact matches (blocks 0, 1, 2);
    # the empty key never matches -> a miss takes the queue front 4.
    t, kv = _donor_40()
    b = add_req(t, 2, 31)
    kv.add_sequence(2, 31, 1, b)
    assert ids(kv, 2) == [0, 1, 2, 4]
    assert (b.prepopulated_prompt_len, b.context_current_position, b.context_chunk_size) == (30, 30, 1)
    assert kv.num_free_blocks == 16
    s = stats(kv)
    assert s["reused_blocks"] == 3 and s["missed_blocks"] == 4 + 1
    assert kv.is_cached(3) and kv.ref_count(3) == 0   # the donor's tail is untouched and still cached
    kv.check_invariants()


def test_reuse_prompt_len_one_before_block_boundary():
    # L = 39 (L % 10 == 9). Keys of 38 tokens: [0..9], [10..19], [20..29], [30..37]; ceil(39/10) = 4.
    # Three exact matches; [30..37] vs block 3's [30..38]: partial match of 8 tokens. Block 3 is an
    # unreferenced leaf -> taken over (same id), even though copy_on_partial_reuse is True
    # (kvcache.md §1.6: copy only when the block has refs or is not a leaf).
    t, kv = _donor_40()
    b = add_req(t, 2, 39)
    kv.add_sequence(2, 39, 1, b)
    assert ids(kv, 2) == [0, 1, 2, 3]
    assert (b.prepopulated_prompt_len, b.context_current_position, b.context_chunk_size) == (38, 38, 1)
    assert kv.num_free_blocks == 16
    assert stats(kv)["reused_blocks"] == 4 and stats(kv)["missed_blocks"] == 4
    assert stats(kv)["alloc_total_blocks"] == 4        # nothing taken from the queue front
    assert not kv.is_cached(3) and kv.tree_parent(3) == -2   # detached by the takeover
    assert kv.is_cached(2)
    kv.check_invariants()


def test_reuse_identical_prompt_caps_at_len_minus_one():
    # L = 40, same tokens as the donor. Keys of 39 tokens equal the stored ones; the last, [30..38],
    # is an exact match of a NON-full block -> treated as partial -> unreferenced leaf: taken over.
    # Reused 39 = L - 1 tokens: the last prompt token is always recomputed.
    t, kv = _donor_40()
    b = add_req(t, 2, 40)
    kv.add_sequence(2, 40, 1, b)
    assert ids(kv, 2) == [0, 1, 2, 3]
    assert (b.prepopulated_prompt_len, b.context_chunk_size) == (39, 1)
    assert b.is_first_context_chunk and b.is_last_context_chunk


def test_reuse_different_lora_does_not_match():
    t, kv = _donor_40()
    b = add_req(t, 2, 31, lora_task_id=5)   # same tokens, LoRA 5 vs none: keys differ
    kv.add_sequence(2, 31, 1, b)
    assert b.prepopulated_prompt_len == 0
    assert ids(kv, 2) == [4, 5, 6, 7]
    assert stats(kv)["reused_blocks"] == 0 and stats(kv)["missed_blocks"] == 8


# --------------------------------------------------------------------------- sharing a prefix


def test_shared_prefix_concurrent():
    # tpb 10, 20 blocks. A = [0..19] + [100..104] (25), B = [0..19] + [200..206] (27).
    t = new_table()
    kv = new_kv(t, 10, 20, 100, enable_block_reuse=True)
    a = add_req(t, 1, toks(20) + toks(5, 100))
    b = add_req(t, 2, toks(20) + toks(7, 200))
    kv.add_sequence(1, 25, 1, a)            # empty tree: 3 misses -> 0, 1, 2
    assert ids(kv, 1) == [0, 1, 2] and kv.num_free_blocks == 17
    kv.store_context_blocks(a)              # full blocks of 24 tokens: [0..9] -> 0, [10..19] -> 1
    assert [kv.is_cached(x) for x in range(3)] == [True, True, False]
    assert kv.tree_parent(1) == 0 and kv.num_cached_blocks == 2
    assert kv.num_free_blocks == 17         # storing does not free anything
    kv.add_sequence(2, 27, 1, b)
    # keys of 26 tokens: [0..9] -> 0 (held by A: no free block used), [10..19] -> 1 (same),
    # [200..205]: no child of 1 -> miss -> queue front 3. Only ONE free block consumed.
    assert ids(kv, 2) == [0, 1, 3]
    assert kv.num_free_blocks == 16
    assert (kv.ref_count(0), kv.ref_count(1), kv.ref_count(2), kv.ref_count(3)) == (2, 2, 1, 1)
    assert b.prepopulated_prompt_len == 20
    assert (b.context_current_position, b.context_chunk_size) == (20, 7)   # min(27, 27 - 20)
    assert stats(kv) == {"alloc_total_blocks": 4, "alloc_new_blocks": 4, "reused_blocks": 2, "missed_blocks": 4}
    # A leaves without storing: its private block 2 is freed; 0 and 1 are still held by B.
    kv.remove_sequence(1)
    assert kv.num_free_blocks == 17 and kv.ref_count(0) == 1
    assert kv.free_queue(0).tolist() == list(range(4, 20)) + [2]
    kv.check_invariants()


def test_shared_prefix_sequential():
    t = new_table()
    kv = new_kv(t, 10, 20, 100, enable_block_reuse=True)
    a = add_req(t, 1, toks(20) + toks(5, 100))
    b = add_req(t, 2, toks(20) + toks(7, 200))
    kv.add_sequence(1, 25, 1, a)
    kv.remove_sequence(1, a)
    # store: keys of 24 tokens (partial allowed): [0..9], [10..19], [100..103] -> chain 0 <- 1 <- 2.
    # release reverse: queue = [3..19, 2, 1, 0]; everything free (20) but 3 blocks cached.
    assert kv.num_free_blocks == 20
    assert [kv.tree_parent(x) for x in range(4)] == [-1, 0, 1, -2]
    assert kv.free_queue(0).tolist()[-3:] == [2, 1, 0]
    kv.add_sequence(2, 27, 1, b)
    # [0..9] -> 0 and [10..19] -> 1 are claimed back out of the free queue (free count drops even
    # though no new memory is used); [200..205] does not match [100..103] at all -> miss -> front 3.
    assert ids(kv, 2) == [0, 1, 3]
    assert kv.num_free_blocks == 17
    assert b.prepopulated_prompt_len == 20
    assert kv.is_cached(2) and kv.ref_count(2) == 0   # A's tail stays cached and free
    assert kv.free_queue(0).tolist() == list(range(4, 20)) + [2]
    assert stats(kv)["reused_blocks"] == 2 and stats(kv)["missed_blocks"] == 3 + 1
    kv.check_invariants()


# --------------------------------------------------------------------------- partial: copy vs takeover


def test_partial_match_copied_when_block_is_held():
    # A = [0..24] live, full blocks stored: 0 = [0..9], 1 = [10..19]. B = [0..14] + [500..509] (25):
    # keys of 24: [0..9], [10..14, 500..504], [505..508].
    t = new_table()
    kv = new_kv(t, 10, 20, 100, enable_block_reuse=True, copy_on_partial_reuse=True)
    a = add_req(t, 1, 25)
    kv.add_sequence(1, 25, 1, a)
    kv.store_context_blocks(a)
    b = add_req(t, 2, toks(15) + toks(10, 500))
    kv.add_sequence(2, 25, 1, b)
    # [0..9] exact -> 0 (held). Key 2 partially matches block 1 (5 leading tokens); block 1 is held by
    # A -> copy into a fresh block (front 3). Key 3: searching stopped -> miss -> 4.
    assert ids(kv, 2) == [0, 3, 4]
    assert b.prepopulated_prompt_len == 15                    # 10 + 5
    assert (b.context_current_position, b.context_chunk_size) == (15, 10)
    assert kv.is_cached(1) and kv.tree_parent(1) == 0         # original stays cached
    assert not kv.is_cached(3)
    assert kv.ref_count(1) == 1                               # the copy does not reference it
    assert kv.num_free_blocks == 20 - 3 - 2 == 15
    assert stats(kv)["reused_blocks"] == 2 and stats(kv)["missed_blocks"] == 3 + 1
    kv.check_invariants()


def test_partial_match_taken_over_when_unreferenced_leaf():
    # A = toks(21): keys [0..9], [10..19], empty -> 0, 1, 2. remove with store: keys of 20 tokens ->
    # 0 <- root, 1 <- 0 (block 2 is not stored). queue = [3..19, 2, 1, 0].
    t = new_table()
    kv = new_kv(t, 10, 20, 100, enable_block_reuse=True, copy_on_partial_reuse=False)
    a = add_req(t, 1, 21)
    kv.add_sequence(1, 21, 1, a)
    kv.remove_sequence(1, a)
    assert kv.is_cached(1) and not kv.is_cached(2)
    b = add_req(t, 2, toks(15) + toks(10, 500))
    kv.add_sequence(2, 25, 1, b)
    # [0..9] -> 0 (claimed back). [10..14, 500..504] vs 1's [10..19]: 5 tokens; 1 is an
    # unreferenced leaf -> eligible even without copy -> taken over: SAME block id 1, detached.
    # Last key -> miss -> front 3.
    assert ids(kv, 2) == [0, 1, 3]
    assert b.prepopulated_prompt_len == 15
    assert not kv.is_cached(1) and kv.tree_parent(1) == -2
    assert kv.is_cached(0)
    assert kv.num_free_blocks == 17
    assert stats(kv)["alloc_total_blocks"] == 3 + 1             # only block 3 came from getFreeBlock
    kv.check_invariants()


def test_partial_match_not_eligible_without_copy_when_held():
    # Same as the copy test but copy_on_partial_reuse=False: held block 1 is not eligible, so the
    # second key is a plain miss and only the first block counts as reused.
    t = new_table()
    kv = new_kv(t, 10, 20, 100, enable_block_reuse=True, copy_on_partial_reuse=False)
    a = add_req(t, 1, 25)
    kv.add_sequence(1, 25, 1, a)
    kv.store_context_blocks(a)
    b = add_req(t, 2, toks(15) + toks(10, 500))
    kv.add_sequence(2, 25, 1, b)
    assert ids(kv, 2) == [0, 3, 4]
    assert b.prepopulated_prompt_len == 10
    assert stats(kv)["reused_blocks"] == 1 and stats(kv)["missed_blocks"] == 3 + 2


def test_partial_reuse_disabled():
    t = new_table()
    kv = new_kv(t, 10, 20, 100, enable_block_reuse=True, enable_partial_reuse=False)
    a = add_req(t, 1, 21)
    kv.add_sequence(1, 21, 1, a)
    kv.remove_sequence(1, a)
    b = add_req(t, 2, toks(15) + toks(10, 500))
    kv.add_sequence(2, 25, 1, b)
    # Only the exact [0..9] match counts; block 1 stays cached (no takeover).
    assert ids(kv, 2) == [0, 3, 4] and b.prepopulated_prompt_len == 10
    assert kv.is_cached(1)


# --------------------------------------------------------------------------- LRU recycling


def test_lru_recycles_interior_block_and_cuts_its_subtree():
    # tpb 10, 6 blocks. A = toks(11) -> [0 ([0..9]), 1 (empty key)]; B = toks(21) added while nothing
    # is stored -> no reuse -> [2 ([0..9]), 3 ([10..19]), 4 (empty)].
    t = new_table()
    kv = new_kv(t, 10, 6, 100, enable_block_reuse=True)
    a, b = add_req(t, 1, 11), add_req(t, 2, 21)
    kv.add_sequence(1, 11, 1, a)
    kv.add_sequence(2, 21, 1, b)
    assert ids(kv, 1) == [0, 1] and ids(kv, 2) == [2, 3, 4]
    kv.remove_sequence(1, a)   # stores [0..9] -> 0 at the root; releases 1, 0 -> queue [5, 1, 0]
    kv.remove_sequence(2, b)   # [0..9] matches 0 (B's 2 is a duplicate, not inserted); [10..19] -> 3 under 0
    #                            releases 4, 3, 2 -> queue [5, 1, 0, 4, 3, 2]
    assert kv.free_queue(0).tolist() == [5, 1, 0, 4, 3, 2]
    assert kv.tree_parent(0) == -1 and kv.tree_parent(3) == 0 and not kv.is_cached(2)
    # The interior cached block 0 is ahead of its cached child 3 in LRU order.
    c = add_req(t, 3, toks(25, 1000))   # unrelated, 3 blocks: takes 5, 1, 0 from the front
    kv.add_sequence(3, 25, 1, c)
    assert ids(kv, 3) == [5, 1, 0]
    # Handing out 0 detached its whole subtree: 3 is free but no longer reachable.
    assert not kv.is_cached(0) and not kv.is_cached(3)
    assert kv.tree_parent(3) == -2 and kv.ref_count(3) == 0
    assert kv.num_cached_blocks == 0
    assert kv.free_queue(0).tolist() == [4, 3, 2]
    # alloc_new: A 2 + B 3 + C: 5 (never used) and 1 (empty key) are new, 0 had tokens -> 2 => 7.
    assert stats(kv)["alloc_total_blocks"] == 8 and stats(kv)["alloc_new_blocks"] == 7
    d = add_req(t, 4, 21)   # B's prompt again: nothing left to reuse
    kv.add_sequence(4, 21, 1, d)
    assert d.prepopulated_prompt_len == 0 and ids(kv, 4) == [4, 3, 2]
    kv.check_invariants()


# --------------------------------------------------------------------------- release order, add_token


@pytest.mark.parametrize("reuse", [False, True])
def test_reverse_order_release(reuse):
    t = new_table()
    kv = new_kv(t, 10, 10, 100, enable_block_reuse=reuse)
    a, b = add_req(t, 1, 35), add_req(t, 2, toks(5, 900))
    kv.add_sequence(1, 35, 1, a)    # 0, 1, 2, 3
    kv.add_sequence(2, 5, 1, b)     # 4
    kv.remove_sequence(1, a)        # released 3, 2, 1, 0 (back of the queue, in that order)
    assert kv.free_queue(0).tolist() == [5, 6, 7, 8, 9, 3, 2, 1, 0]
    kv.remove_sequence(2)
    assert kv.free_queue(0).tolist() == [5, 6, 7, 8, 9, 3, 2, 1, 0, 4]
    kv.check_invariants()


@pytest.mark.parametrize("L", [7, 8, 9])
def test_add_token_allocates_at_boundary(L):
    # tpb 4: add_token allocates iff (numTokens - 1) % 4 == 0 after the increment, so the block
    # count always equals ceil(numTokens / 4).
    t = new_table()
    kv = new_kv(t, 4, 10, 100)
    r = add_req(t, 1, L, max_new=20)
    kv.add_sequence(1, L, 1, r)
    expected_ids = list(range(-(-L // 4)))
    assert ids(kv, 1) == expected_ids
    next_id = len(expected_ids)
    for n in range(L + 1, L + 10):
        kv.add_token(1)
        if (n - 1) % 4 == 0:
            expected_ids.append(next_id)
            next_id += 1
        assert kv.get_sequence_num_tokens(1) == n
        assert ids(kv, 1) == expected_ids
        assert len(expected_ids) == -(-n // 4)
    # Hand check for L = 8: tokens 9 and 13 allocated -> 8 + 9 = 17 tokens, 5 blocks.
    if L == 8:
        assert ids(kv, 1) == [0, 1, 2, 3, 4]


def test_add_token_first_allocation_points():
    # L = 8 (tpb 4): the very first add_token (9 tokens) allocates; L = 7: the second one does.
    t = new_table()
    kv = new_kv(t, 4, 10, 100)
    a, b = add_req(t, 1, 8), add_req(t, 2, 7)
    kv.add_sequence(1, 8, 1, a)    # 0, 1
    kv.add_sequence(2, 7, 1, b)    # 2, 3
    kv.add_token(1)
    assert ids(kv, 1) == [0, 1, 4]
    kv.add_token(2)                # 8 tokens: (8 - 1) % 4 = 3 -> no block
    assert ids(kv, 2) == [2, 3]
    kv.add_token(2)                # 9 tokens: (9 - 1) % 4 = 0 -> block 5
    assert ids(kv, 2) == [2, 3, 5]


# --------------------------------------------------------------------------- estimates (G1)


def test_remaining_blocks_spec_example():
    # kvcache.md §1.12: prompt 10, max_new 80, tpb 10, W = max_seq_len 90.
    # ctx = floor(10/10) = 1; totalPerBeam = ceil(min(90, 90)/10) = 9; gen = 8; alloc 0 < 1
    # -> (1 - 0) + 8 * 1 = 9.
    t = new_table()
    kv = new_kv(t, 10, 20, 90)
    r = add_req(t, 1, 10, max_new=80)
    assert kv.get_remaining_blocks_to_completion(r) == 9
    kv.add_sequence(1, 10, 1, r)
    # alloc = 1, not < ctx -> (9 - 1 + 0) * 1 = 8.
    assert kv.get_remaining_blocks_to_completion(r) == 8
    kv.add_token(1)                 # 11 tokens: a second block -> alloc 2 -> 9 - 2 = 7
    assert kv.get_remaining_blocks_to_completion(r) == 7
    assert kv.get_remaining_blocks_to_completion_batch(slots(r)).tolist() == [7]


def test_remaining_blocks_formula_cases():
    t = new_table()
    kv = new_kv(t, 10, 20, 100)
    # prompt 15, max_new 20, beam 2 (formula only): ctx = floor(15/10) = 1 (floor, not ceil),
    # total = ceil(35/10) = 4, gen = 3 -> 1 + 3 * 2 = 7.  (ceil for ctx would give 2 + 2*2 = 6.)
    a = add_req(t, 1, 15, max_new=20, beam_width=2)
    # prompt 15, max_new 20, beam 1 -> 1 + 3 = 4.
    b = add_req(t, 2, 15, max_new=20)
    # prompt 10, max_new 40, W 100 -> ctx 1, total ceil(50/10) = 5 -> 5.
    c = add_req(t, 3, 10, max_new=40)
    # prompt 10, max_new 91: total_len 101 > W 100 -> totalPerBeam = ceil(100/10) = 10, ctx 1, gen 9;
    # extra = 1 since ceil(101/10) = 11 > ceil(numTokens 10 / 10) = 1 and 11 > 10 -> 1 + (9 + 1) = 11.
    d = add_req(t, 4, 10, max_new=91)
    # prompt 10, max_new 90: total_len 100 = W -> no extra: 1 + 9 = 10.
    e = add_req(t, 5, 10, max_new=90)
    # prompt 1, max_new 1: ctx 0, total ceil(2/10) = 1 -> alloc 0 is not < 0 -> (1 - 0) * 1 = 1.
    f = add_req(t, 6, 1, max_new=1)
    expected = [7, 4, 5, 11, 10, 1]
    got = [kv.get_remaining_blocks_to_completion(x) for x in (a, b, c, d, e, f)]
    assert got == expected
    assert kv.get_remaining_blocks_to_completion_batch(slots(a, b, c, d, e, f)).tolist() == expected
    assert kv.get_remaining_blocks_to_completion_sum(slots(a, b, c, d, e, f)) == 38  # 7+4+5+11+10+1
    assert kv.get_remaining_blocks_to_completion_sum(slots()) == 0
    kv.add_sequence(2, 15, 1, b)    # alloc 2 -> 4 - 2 = 2
    assert kv.get_remaining_blocks_to_completion(b) == 2
    kv.add_sequence(6, 1, 1, f)     # alloc 1 -> 1 - 1 = 0
    assert kv.get_remaining_blocks_to_completion(f) == 0


def test_remaining_blocks_input_shorter_than_prompt():
    # prompt 25, max_new 10, tpb 10: ctx = 2, total = ceil(35/10) = 4, gen = 2.
    # add_sequence(7) allocates 1 < ctx -> (2 - 1) + 2 * 1 = 3.
    t = new_table()
    kv = new_kv(t, 10, 20, 100)
    r = add_req(t, 1, 25, max_new=10)
    kv.add_sequence(1, 7, 1, r)
    assert kv.get_remaining_blocks_to_completion(r) == 3


def test_needed_blocks_context_first_chunk():
    t = new_table()
    kv = new_kv(t, 10, 20, 100)
    # Case A (kvcache.md §1.12, G1): len = min(prompt + drafts, W + maxNew);
    # need = floor(len / 10) + (len % 10 > 0 ? beam : 0).
    cases = [  # (prompt, drafts, max_new, beam, expected)
        (25, 0, 10, 1, 3),    # 25 -> 2 + 1
        (28, 0, 10, 1, 3),    # 28 -> 2 + 1
        (28, 3, 10, 1, 4),    # 31 -> 3 + 1: draft tokens push it over the boundary
        (27, 3, 10, 1, 3),    # 30 -> 3 + 0: exactly on the boundary
        (30, 0, 10, 1, 3),    # 30 -> 3
        (31, 0, 10, 1, 4),    # 31 -> 3 + 1
        (25, 0, 10, 2, 4),    # 25 -> 2 + 1 * 2 (beam 2: the unshared last block per beam)
        (1, 0, 10, 1, 1),     # 1 -> 0 + 1
        (99, 12, 1, 1, 11),   # min(111, 100 + 1) = 101 -> 10 + 1 (uncapped 111 would give 12)
    ]
    reqs = [add_req(t, i, p, max_new=mn, num_draft_tokens=d, beam_width=bw)
            for i, (p, d, mn, bw, _) in enumerate(cases)]
    got = [kv.get_needed_blocks_one_step(r) for r in reqs]
    assert got == [c[-1] for c in cases]
    # two_steps_look_ahead does not change case A.
    assert [kv.get_needed_blocks_one_step(r, True) for r in reqs] == got
    assert kv.get_needed_blocks_one_step_batch(slots(*reqs)).tolist() == got
    assert kv.get_needed_blocks_one_step_sum(slots(*reqs)) == 3 + 3 + 4 + 3 + 3 + 4 + 4 + 1 + 11
    assert kv.get_needed_blocks_one_step_sum(slots(*reqs), True) == sum(got)


def test_needed_blocks_later_context_chunk_is_zero():
    t = new_table()
    kv = new_kv(t, 10, 20, 100)
    r = add_req(t, 1, 25)
    r.context_chunk_size = 10
    kv.add_sequence(1, 25, 1, r)
    assert kv.get_needed_blocks_one_step(r) == 3          # still the first chunk (pos 0 == 0)
    r.move_to_next_context_chunk()                        # pos 10 != prepopulated 0
    assert kv.get_needed_blocks_one_step(r) == 0
    enc = add_req(t, 2, 25, state=S.ENCODER_INIT)
    done = add_req(t, 3, 25, state=S.GENERATION_COMPLETE)
    assert kv.get_needed_blocks_one_step(enc) == 0 and kv.get_needed_blocks_one_step(done) == 0
    # Disagg generation init counts like a first context chunk: 25 -> 3.
    dg = add_req(t, 4, 25, state=S.DISAGG_GENERATION_INIT)
    assert kv.get_needed_blocks_one_step(dg) == 3


def test_needed_blocks_generation():
    # tpb 10. cur = the manager's token count; add = min(k * (drafts + 1), maxNew - generated);
    # need = ceil((cur + add)/10) - ceil(cur/10), or 0 when cur + add > max_seq_len.
    t = new_table()
    kv = new_kv(t, 10, 20, 100)
    r = add_req(t, 1, 10, max_new=20)
    kv.add_sequence(1, 10, 1, r)
    r.set_state(S.GENERATION_IN_PROGRESS)
    # cur 10 -> next 11: ceil(11/10) - ceil(10/10) = 2 - 1 = 1 (crossing a boundary)
    assert kv.get_needed_blocks_one_step(r) == 1
    kv.add_token(1)       # cur 11 -> next 12: 2 - 2 = 0
    assert kv.get_needed_blocks_one_step(r) == 0
    for _ in range(8):
        kv.add_token(1)   # cur 19
    assert kv.get_sequence_num_tokens(1) == 19
    # one step: 20 -> 2 - 2 = 0; two steps: 21 -> 3 - 2 = 1.
    assert kv.get_needed_blocks_one_step(r, False) == 0
    assert kv.get_needed_blocks_one_step(r, True) == 1
    r.set_num_draft_tokens(2)
    kv.add_token(1)
    kv.add_token(1)       # cur 21, generated 11
    # add = min(3, 20 - 11) = 3 -> 24: ceil 3 - ceil(21/10) 3 = 0.
    assert kv.get_needed_blocks_one_step(r) == 0
    for _ in range(6):
        kv.add_token(1)   # cur 27, generated 17
    # one step: min(3, 3) = 3 -> 30 -> 0; two steps: min(6, 3) = 3 -> 30 -> 0 (uncapped 33 -> 1).
    assert kv.get_needed_blocks_one_step(r, False) == 0
    assert kv.get_needed_blocks_one_step(r, True) == 0
    kv.add_token(1)       # cur 28, generated 18: add = min(3, 2) = 2 -> 30 -> 0 (uncapped 31 -> 1)
    assert kv.get_needed_blocks_one_step(r) == 0
    r.set_num_draft_tokens(0)
    kv.add_token(1)
    kv.add_token(1)       # cur 30, generated 20 = maxNew: add = min(1, 0) = 0 -> 0 (uncapped 31 -> 1)
    assert kv.get_needed_blocks_one_step(r) == 0
    assert kv.get_needed_blocks_one_step(r, True) == 0


def test_needed_blocks_generation_drafts_cross_boundary():
    t = new_table()
    kv = new_kv(t, 10, 20, 100)
    r = add_req(t, 1, 18, max_new=20, num_draft_tokens=2, state=S.GENERATION_IN_PROGRESS)
    kv.add_sequence(1, 18, 1, r)
    # cur 18: add = min(3, 20) = 3 -> 21 -> 3 - 2 = 1; without drafts 19 -> 0.
    assert kv.get_needed_blocks_one_step(r) == 1
    r.set_num_draft_tokens(0)
    assert kv.get_needed_blocks_one_step(r) == 0


def test_needed_blocks_generation_past_max_seq_len_is_zero():
    t = new_table()
    kv = new_kv(t, 10, 20, 20)
    r = add_req(t, 1, 10, max_new=20, state=S.GENERATION_IN_PROGRESS)
    kv.add_sequence(1, 10, 1, r)
    for _ in range(10):
        kv.add_token(1)   # cur 20 = max_seq_len
    # next 21 > 20 -> 0 even though a boundary would be crossed.
    assert kv.get_needed_blocks_one_step(r) == 0
    s = add_req(t, 2, 5, max_new=5, state=S.GENERATION_IN_PROGRESS)
    with pytest.raises(ValueError, match="no sequence"):
        kv.get_needed_blocks_one_step(s)


# --------------------------------------------------------------------------- scheduling snapshot


def test_scheduling_snapshot_and_remove():
    t = new_table()
    kv = new_kv(t, 10, 10, 100, enable_block_reuse=True)
    a = add_req(t, 1, 25)
    kv.add_sequence(1, 25, 1, a)             # 0, 1, 2
    kv.store_context_blocks(a)               # 0, 1 cached
    b = add_req(t, 2, toks(20) + toks(5, 300))
    kv.add_sequence(2, 25, 1, b)             # reuses 0, 1 (refs 2) + new 3
    assert ids(kv, 2) == [0, 1, 3] and kv.num_free_blocks == 6
    assert kv.start_scheduling() == 6 and kv.scheduling_free_blocks == 6
    assert kv.scheduling_has_free_blocks(6) and not kv.scheduling_has_free_blocks(7)
    # A: 0 (2 -> 1), 1 (2 -> 1), 2 (1 -> 0: +1) -> 7. Shared blocks do not become free.
    assert kv.scheduling_remove_sequence(1) == 7
    assert kv.scheduling_free_blocks == 7 and kv.scheduling_has_free_blocks(7)
    assert kv.num_free_blocks == 6 and kv.ref_count(0) == 2      # real state untouched
    with pytest.raises(ValueError, match="already removed"):
        kv.scheduling_remove_sequence(1)
    assert kv.scheduling_free_blocks == 7
    # B: 0 (1 -> 0), 1 (1 -> 0), 3 (1 -> 0) -> 10.
    assert kv.scheduling_remove_sequence(2) == 10
    # A new pass starts from the real state again.
    assert kv.start_scheduling() == 6
    assert kv.scheduling_remove_sequence(2) == 7                # B alone: only 3 frees (0, 1 shared)
    assert kv.scheduling_remove_sequence(1) == 10
    assert kv.scheduling_has_free_blocks(10, 100)               # window_size = max_seq_len is fine
    with pytest.raises(ValueError, match="window_size 50"):
        kv.scheduling_has_free_blocks(1, 50)
    add_req(t, 3, 5)                                            # a request without a sequence
    with pytest.raises(ValueError, match="no sequence"):
        kv.scheduling_remove_sequence(3)
    kv.check_invariants()


def test_get_num_free_blocks_per_window_and_stats_dict():
    t = new_table()
    kv = new_kv(t, 10, 10, 64)
    r = add_req(t, 1, 15)
    kv.add_sequence(1, 15, 1, r)
    assert kv.get_num_free_blocks_per_window_size() == {64: 8}
    s = kv.get_kv_cache_stats()
    assert (s["max_num_blocks"], s["free_num_blocks"], s["used_num_blocks"], s["tokens_per_block"]) == (10, 8, 2, 10)
    assert s["num_free_blocks_per_window_size"] == {64: 8}
    assert s["cache_hit_rate"] == 0.0  # reuse off: no block was looked up in the tree


# --------------------------------------------------------------------------- secondary pool


def test_secondary_pool_offload_and_onboard():
    # tpb 10, 4 primary blocks (0..3) and 3 secondary blocks (4..6).
    t = new_table()
    kv = new_kv(t, 10, 4, 100, enable_block_reuse=True, num_secondary_blocks=3)
    assert kv.max_num_blocks == 7 and kv.num_free_blocks == 4 and kv.num_free_secondary_blocks == 3
    assert kv.free_queue(1).tolist() == [4, 5, 6]
    assert kv.num_used_blocks == 3       # used = max (primary + secondary) - free primary
    a = add_req(t, 1, 21)
    kv.add_sequence(1, 21, 1, a)        # [0..9] -> 0, [10..19] -> 1, empty -> 2
    kv.remove_sequence(1, a)            # stores 0 <- root, 1 <- 0; queue0 = [3, 2, 1, 0]
    assert kv.free_queue(0).tolist() == [3, 2, 1, 0]
    b = add_req(t, 2, toks(30, 1000))   # unrelated, 3 blocks
    kv.add_sequence(2, 30, 1, b)
    # 3: never used -> new. 2: empty key -> new. 1: has tokens, priority 35 >= 30 and a host block is
    # free -> offloaded: host block 4 takes 1's primary slot and is handed out; 1 moves to the
    # secondary queue, still cached.
    assert ids(kv, 2) == [3, 2, 4]
    assert kv.free_queue(0).tolist() == [0] and kv.num_free_blocks == 1
    assert kv.free_queue(1).tolist() == [5, 6, 1] and kv.num_free_secondary_blocks == 3
    assert not kv.is_primary(1) and kv.is_primary(4)
    assert kv.is_cached(1) and kv.tree_parent(1) == 0 and kv.is_cached(0)
    assert kv.num_used_blocks == 7 - 1
    kv.check_invariants()
    kv.remove_sequence(2)               # no store; releases 4, 2, 3 -> queue0 [0, 4, 2, 3]
    assert kv.free_queue(0).tolist() == [0, 4, 2, 3]
    c = add_req(t, 3, 21)               # A's prompt again
    kv.add_sequence(3, 21, 1, c)
    # [0..9] -> 0 (primary, claimed back). [10..19] -> 1 (secondary): claimed from queue1, then
    # onboarded: a primary block is taken from the front (4, holding B's [1020..1028] -> itself
    # offloaded: host 5 takes its slot); 1 gets 5's primary slot and 5 goes back to queue1.
    # Empty key -> miss -> front 2 (B's [1010..1019]: offloaded to host 6, 6 handed out).
    assert ids(kv, 3) == [0, 1, 6]
    assert c.prepopulated_prompt_len == 20
    assert all(kv.is_primary(x) for x in ids(kv, 3))
    assert kv.free_queue(0).tolist() == [3] and kv.num_free_blocks == 1
    assert kv.free_queue(1).tolist() == [4, 5, 2]
    assert stats(kv) == {"alloc_total_blocks": 3 + 3 + 2, "alloc_new_blocks": 3 + 2 + 0,
                         "reused_blocks": 2, "missed_blocks": 3 + 3 + 1}
    assert kv.tree_parent(1) == 0 and kv.ref_count(1) == 1
    kv.check_invariants()


def test_secondary_onboard_can_evict_the_next_cached_block():
    # kvcache.md §2.6: "Host onboarding inside addSequence can evict reusable blocks" (G1 hazard).
    # tpb 10, 4 primary (0..3), 2 secondary (4, 5).
    t = new_table()
    kv = new_kv(t, 10, 4, 100, enable_block_reuse=True, num_secondary_blocks=2)
    a = add_req(t, 1, 21)
    kv.add_sequence(1, 21, 1, a)
    kv.remove_sequence(1, a)            # 0 <- root, 1 <- 0; queue0 [3, 2, 1, 0]
    b = add_req(t, 2, toks(40, 1000))
    kv.add_sequence(2, 40, 1, b)        # 3, 2, then 1 and 0 offloaded (hosts 4 and 5 handed out)
    assert ids(kv, 2) == [3, 2, 4, 5]
    assert kv.free_queue(1).tolist() == [1, 0] and kv.num_free_blocks == 0
    assert kv.is_cached(0) and kv.is_cached(1) and not kv.is_primary(0)
    kv.remove_sequence(2)               # queue0 [5, 4, 2, 3]
    c = add_req(t, 3, 21)
    kv.add_sequence(3, 21, 1, c)
    # [0..9] -> 0 (secondary; claimed, so only host block 1 is left in queue1). Onboarding takes
    # the primary front 5, which holds B's tokens and is offloaded: it swaps storage with the host
    # queue front -- block 1, the cached [10..19] child C wants next -- and block 1 is handed out
    # as the helper, which detaches it from the tree; the helper then takes 0's host storage.
    # [10..19] now misses: front 4 (B's tokens) is offloaded into host block 5, 5 handed out.
    # The empty key misses: front 2 (B's tokens) offloaded into host block 1, 1 handed out.
    assert c.prepopulated_prompt_len == 10
    assert ids(kv, 3) == [0, 5, 1]
    assert kv.free_queue(0).tolist() == [3] and kv.free_queue(1).tolist() == [4, 2]
    assert not kv.is_cached(1) and kv.num_cached_blocks == 1
    assert stats(kv)["reused_blocks"] == 1
    kv.check_invariants()


def test_add_sequence_precheck_undercounts_after_onboard_eviction():
    # Regression: the pre-check once assumed evictions during the walk only hit blocks that cost one
    # anyway; onboarding a host block can evict a cached parent of a held block. After the first
    # onboarding every position is now charged one, so this call is refused up front.
    # tpb 10, 10 primary blocks (0..9), 1 secondary block (10).
    t = new_table()
    kv = new_kv(t, 10, 10, 100, enable_block_reuse=True, num_secondary_blocks=1)
    w1, w2, x = add_req(t, 1, 11), add_req(t, 2, 21), add_req(t, 3, 31)
    g = add_req(t, 4, toks(1, 5000))
    for r in (w1, w2, x, g):            # nothing stored yet: no reuse
        kv.add_sequence(r.request_id, r.prompt_len, 1, r)
    assert [ids(kv, i) for i in (1, 2, 3, 4)] == [[0, 1], [2, 3, 4], [5, 6, 7, 8], [9]]
    kv.remove_sequence(1, w1)           # [0..9] -> 0 at the root; queue [1, 0]
    kv.remove_sequence(2, w2)           # [0..9] matches 0; [10..19] -> 3 under 0; queue [1, 0, 4, 3, 2]
    kv.store_context_blocks(x)          # [0..9] -> 0, [10..19] -> 3, [20..29] -> X's 7 under 3
    assert [kv.tree_parent(i) for i in (0, 3, 7)] == [-1, 0, 3]
    f = add_req(t, 5, toks(30, 9000))
    kv.add_sequence(5, 30, 1, f)        # takes 1, 0 (offloaded to host 10; 10 handed out), 4
    assert ids(kv, 5) == [1, 10, 4] and not kv.is_primary(0) and kv.is_cached(0)
    kv.remove_sequence(4)               # queue [3, 2, 9]: 3 free primary blocks
    assert kv.free_queue(0).tolist() == [3, 2, 9]
    # Y = X's prompt (31 tokens): keys [0..9] -> 0 (secondary: costs 1), [10..19] -> 3 (free: 1),
    # [20..29] -> 7 (held by X: 0), empty (1) => the pre-check counts 3 <= 3 free.
    # Real walk: onboarding 0 takes the primary front 3 (no host block free -> not offloaded), which
    # detaches 3 and 7; then [10..19], [20..29] and the empty key all miss -> 4 blocks needed.
    y = add_req(t, 6, 31)
    before = kv_snapshot(kv, [6])
    # Upper bound: 1 (onboard 0) + 1 (3) + 1 (7, after an onboarding) + 1 (empty key) = 4 > 3 free.
    with pytest.raises(ValueError, match="needs 4 free blocks, 3 free"):
        kv.add_sequence(6, 31, 1, y)
    assert kv_snapshot(kv, [6]) == before
    assert y.prepopulated_prompt_len == 0 and not kv.has_sequence(6)
    kv.check_invariants()


# --------------------------------------------------------------------------- bad input


def _busy_kv():
    """tpb 10, 6 blocks, reuse on; request 1 holds 3 blocks with 2 cached; request 2 exists without KV."""
    t = new_table(8)
    kv = new_kv(t, 10, 6, 50, enable_block_reuse=True)
    a = add_req(t, 1, 25, max_new=20)
    kv.add_sequence(1, 25, 1, a)
    kv.store_context_blocks(a)
    b = add_req(t, 2, toks(40, 100), max_new=5)
    return t, kv, a, b


def _assert_rejected(kv, t, call, exc, words):
    before = kv_snapshot(kv, [1, 2])
    n = len(t)
    with pytest.raises(exc, match=words):
        call()
    assert kv_snapshot(kv, [1, 2]) == before
    assert len(t) == n
    kv.check_invariants()


def test_duplicate_add_sequence():
    t, kv, a, b = _busy_kv()
    _assert_rejected(kv, t, lambda: kv.add_sequence(1, 25, 1, a), ValueError, "already has a sequence")
    assert a.prepopulated_prompt_len == 0


def test_unknown_request_id():
    t, kv, a, b = _busy_kv()
    for call in (lambda: kv.add_sequence(99, 5, 1), lambda: kv.add_token(99),
                 lambda: kv.remove_sequence(99), lambda: kv.get_cache_block_ids(99),
                 lambda: kv.scheduling_remove_sequence(99)):
        _assert_rejected(kv, t, call, ValueError, "unknown request id 99")
    for call in (lambda: kv.add_token(2), lambda: kv.remove_sequence(2),
                 lambda: kv.store_context_blocks(b), lambda: kv.get_cache_block_ids(2)):
        _assert_rejected(kv, t, call, ValueError, "no sequence")


def test_input_longer_than_max_seq_len():
    t, kv, a, b = _busy_kv()
    # b has 40 tokens; max_seq_len is 50; 51 > 50.
    c = add_req(t, 3, 51)
    _assert_rejected(kv, t, lambda: kv.add_sequence(3, 51, 1, c), ValueError, "exceeds max_seq_len 50")
    _assert_rejected(kv, t, lambda: kv.add_sequence(2, 0, 1, b), ValueError, "positive")
    # With reuse the input cannot exceed the request's own tokens (keys come from them).
    _assert_rejected(kv, t, lambda: kv.add_sequence(2, 41, 1, b), ValueError, "exceeds the request")


def test_beam_width_two_rejected():
    t, kv, a, b = _busy_kv()
    _assert_rejected(kv, t, lambda: kv.add_sequence(2, 10, 2, b), ValueError, "beam width 2")


def test_llm_request_mismatch():
    t, kv, a, b = _busy_kv()
    _assert_rejected(kv, t, lambda: kv.add_sequence(2, 10, 1, a), ValueError, "does not match")
    other = new_table(2)
    o = add_req(other, 2, 10)
    _assert_rejected(kv, t, lambda: kv.get_needed_blocks_one_step(o), ValueError, "another RequestTable")


def test_not_enough_free_blocks_boundary():
    t, kv, a, b = _busy_kv()
    assert kv.num_free_blocks == 3
    # b: 40 tokens -> 4 blocks, nothing to reuse -> needs 4 > 3.
    _assert_rejected(kv, t, lambda: kv.add_sequence(2, 40, 1, b), ValueError, "needs 4 free blocks, 3 free")
    # c shares A's 2 held blocks: 45 tokens -> 5 keys, 2 held matches cost 0 -> needs 3 <= 3: fits.
    c = add_req(t, 3, toks(20) + toks(25, 700))
    kv.add_sequence(3, 45, 1, c)
    assert ids(kv, 3) == [0, 1, 3, 4, 5] and kv.num_free_blocks == 0
    assert c.prepopulated_prompt_len == 20
    kv.check_invariants()


def test_not_enough_free_blocks_with_free_cached_match():
    # A free cached block still costs one free block when claimed back (kvcache.md §1.3).
    t = new_table()
    kv = new_kv(t, 10, 4, 100, enable_block_reuse=True)
    a = add_req(t, 1, 21)
    kv.add_sequence(1, 21, 1, a)
    kv.remove_sequence(1, a)                  # 0, 1 cached and free; 4 free
    filler = add_req(t, 2, toks(10, 500))
    kv.add_sequence(2, 10, 1, filler)         # takes front 3 -> 3 free: [2, 1, 0]
    c = add_req(t, 3, toks(20) + toks(11, 800))   # 31 tokens -> 4 keys; 2 free cached matches still cost 1 each
    _assert_rejected(kv, t, lambda: kv.add_sequence(3, 31, 1, c), ValueError, "needs 4 free blocks, 3 free")


def test_add_token_without_free_block_at_boundary():
    t = new_table()
    kv = new_kv(t, 4, 2, 100)
    r = add_req(t, 1, 7, max_new=10)
    kv.add_sequence(1, 7, 1, r)     # 2 blocks, 0 free
    kv.add_token(1)                 # 8 tokens: (8 - 1) % 4 != 0 -> no block needed, succeeds
    assert kv.get_sequence_num_tokens(1) == 8 and ids(kv, 1) == [0, 1]
    before = kv_snapshot(kv, [1])
    with pytest.raises(ValueError, match="none free"):
        kv.add_token(1)             # 9 tokens would need a block
    assert kv_snapshot(kv, [1]) == before
    assert kv.get_sequence_num_tokens(1) == 8
    kv.check_invariants()


@pytest.mark.parametrize("kwargs, words", [
    ({"max_attention_window_vec": [50, 30]}, "window 30"),
    ({"max_attention_window_vec": [40]}, "window 40"),
    ({"sink_token_length": 4}, "sink"),
    ({"cross_kv": True, "enable_block_reuse": True}, "cross"),
])
def test_constructor_rejects_unsupported_config(kwargs, words):
    t = new_table()
    with pytest.raises(ValueError, match=words):
        new_kv(t, 10, 10, 50, **kwargs)
    kv = new_kv(t, 10, 10, 50, max_attention_window_vec=[50])
    assert kv.max_attention_window_vec == [50] and not kv.is_variable_window


@pytest.mark.parametrize("args, words", [((0, 10, 50), "tokens_per_block"), ((10, 0, 50), "num_blocks"),
                                         ((10, 10, 0), "max_seq_len")])
def test_constructor_rejects_nonpositive_sizes(args, words):
    with pytest.raises(ValueError, match=words):
        ts.KVCacheManager(new_table(), *args)


def test_wrong_window_size_in_queries():
    t, kv, a, b = _busy_kv()
    for call in (lambda: kv.scheduling_has_free_blocks(1, 49),
                 lambda: kv.get_remaining_blocks_to_completion(a, 49),
                 lambda: kv.get_needed_blocks_one_step(a, False, 49)):
        _assert_rejected(kv, t, call, ValueError, "window_size 49")
    assert kv.get_remaining_blocks_to_completion(a, 50) == kv.get_remaining_blocks_to_completion(a)


def test_batch_queries_bad_arrays():
    t, kv, a, b = _busy_kv()
    good = slots(a, b)
    batch_fns = [kv.get_remaining_blocks_to_completion_batch, kv.get_needed_blocks_one_step_batch,
                 kv.get_sequence_num_blocks_batch, kv.find_new_context_block_batch,
                 kv.get_remaining_blocks_to_completion_sum, kv.get_needed_blocks_one_step_sum]
    for fn in batch_fns:
        _assert_rejected(kv, t, lambda: fn(good.astype(np.float64)), TypeError, "int32")
        _assert_rejected(kv, t, lambda: fn(good.astype(np.int64)), TypeError, "int32")
        _assert_rejected(kv, t, lambda: fn(good.reshape(1, 2)), TypeError, "1-D")
        _assert_rejected(kv, t, lambda: fn(np.array([a.slot, 0, b.slot, 0], dtype=np.int32)[::2]),
                         TypeError, "contiguous")
    assert kv.get_sequence_num_blocks_batch(good).tolist() == [3, 0]
    # A removed request's slot is rejected.
    c = add_req(t, 3, 5)
    stale = slots(a, c)
    t.remove_request(c)
    for fn in batch_fns:
        _assert_rejected(kv, t, lambda: fn(stale), ValueError, "no live request")


def test_remove_request_refused_while_kv_sequence_exists():
    t, kv, a, b = _busy_kv()
    before = kv_snapshot(kv, [1])
    with pytest.raises(ValueError, match="remove_sequence first"):
        t.remove_request(a)
    assert len(t) == 2 and a.is_valid and kv_snapshot(kv, [1]) == before
    kv.remove_sequence(1, a)
    t.remove_request(a)
    assert len(t) == 1 and not a.is_valid
    kv.check_invariants()


def test_kv_manager_destruction_releases_request():
    # The manager holds a kv ref on the request; destroying it lets the request go.
    t = new_table()
    kv = new_kv(t, 10, 10, 100)
    r = add_req(t, 1, 5)
    kv.add_sequence(1, 5, 1, r)
    del kv
    import gc
    gc.collect()
    t.remove_request(r)
    assert len(t) == 0


# --------------------------------------------------------------------------- prefix queries


def test_find_new_context_block():
    t = new_table()
    kv = new_kv(t, 10, 20, 100, enable_block_reuse=True)
    a = add_req(t, 1, 25)
    kv.add_sequence(1, 25, 1, a)
    kv.store_context_blocks(a)            # [0..9], [10..19] cached
    b = add_req(t, 2, 35)
    # all tokens (not -1), full blocks: [0..9] hit, [10..19] hit, [20..29] miss -> tokens 0..29.
    tok, lora = kv.find_new_context_block(b)
    assert tok.tolist() == toks(30) and lora is None
    c = add_req(t, 3, 20)                 # [0..9], [10..19] both cached -> None
    assert kv.find_new_context_block(c) is None
    d = add_req(t, 4, 36)                 # same first new block as b
    e = add_req(t, 5, toks(10) + toks(20, 600))
    assert kv.find_new_context_block_batch(slots(b, c, d, e)).tolist() == [0, -1, 0, 1]


# ------------------------------------------- block hashes, resumed walks, compact skip keys (issue 11)


def work(kv):
    s = kv.get_kv_cache_stats()
    return s["blocks_hashed"], s["blocks_compared"]


def _cached_prefix(t, kv, n=25):
    """Request 1 with prompt toks(n), its full blocks stored: [0..9], [10..19] cached (tpb 10)."""
    a = add_req(t, 1, n)
    kv.add_sequence(1, n, 1, a)
    kv.store_context_blocks(a)
    return a


def test_a_second_question_over_unchanged_requests_hashes_and_compares_nothing():
    t = new_table()
    kv = new_kv(t, 10, 40, 100, enable_block_reuse=True)
    _cached_prefix(t, kv)
    w0 = work(kv)
    waiting = [add_req(t, 2, 35), add_req(t, 3, 36), add_req(t, 4, toks(10) + toks(20, 600)), add_req(t, 5, 20)]
    first = kv.find_new_context_block_batch(slots(*waiting)).tolist()
    assert first == [0, 0, 1, -1]
    w1 = work(kv)
    # Hashed: 3 blocks each for 2 and 3 (two hits, the miss), 2 for 4, 2 for 5 (both hit).
    assert w1[0] - w0[0] == 3 + 3 + 2 + 2
    # Compared: 2 + 2 + 1 + 2 tree matches confirmed, and 3's key confirmed equal to 2's (one block).
    assert w1[1] - w0[1] == 2 + 2 + 1 + 2 + 1
    for _ in range(2):  # the next steps: nothing they depend on changed
        assert kv.find_new_context_block_batch(slots(*waiting)).tolist() == first
        assert work(kv)[0] == w1[0]
    # Interning the same keys again in a new pass compares the shared key once more, nothing else.
    assert work(kv)[1] - w1[1] == 2


def test_scheduling_twice_hashes_nothing_the_second_time():
    """The issue's counter test: a second step over unchanged waiting requests hashes no block
    again (both batched backends: the question is the cache's)."""
    from tllm_sched.config import SchedulerConfig
    from tllm_sched.scheduler import Scheduler

    for backend in ("cpp", "python"):
        t = new_table()
        kv = new_kv(t, 10, 40, 100, enable_block_reuse=True)
        _cached_prefix(t, kv)
        lst = ts.RequestList(t)
        for rid in range(2, 8):  # waiting contexts sharing the cached prefix, pairwise equal beyond it
            lst.append(add_req(t, rid, toks(20) + toks(10, 1000 + rid // 2)))
        s = Scheduler(SchedulerConfig("GUARANTEED_NO_EVICT", 1), t, kv, backend=backend)
        out = s.schedule(lst)
        assert t.request_ids(out.context).tolist() == [2]
        hashed = work(kv)[0]
        out = s.schedule(lst)
        assert t.request_ids(out.context).tolist() == [2]
        assert work(kv)[0] == hashed


def test_a_walk_resumes_when_blocks_are_stored_under_its_end():
    t = new_table()
    kv = new_kv(t, 10, 40, 100, enable_block_reuse=True)
    _cached_prefix(t, kv)
    b = add_req(t, 2, 45)
    assert kv.find_new_context_block(b)[0].tolist() == toks(30)  # [20..29] is new
    h, c = work(kv)
    x = add_req(t, 3, 41)  # computes [20..29] and [30..39] and stores them under [10..19]
    kv.add_sequence(3, 41, 1, x)
    kv.store_context_blocks(x)
    h2, c2 = work(kv)
    assert kv.find_new_context_block(b) is None  # every full block of b is cached now
    # Resumed from [10..19]: b's last 2 full blocks confirmed, of which only the last is hashed
    # now ([20..29] was hashed by the first walk, where it missed); its first 2 are not touched.
    assert work(kv)[0] - h2 == 1 and work(kv)[1] - c2 == 2


def test_a_walk_starts_over_when_a_block_of_its_path_is_recycled():
    # 4 blocks: request 1 (25 tokens, 3 blocks) caches [0..9], [10..19] and, on release, its
    # partial [20..23]; the free queue is then 3, 2, 1, 0 (reverse release). Three fresh blocks
    # for another prompt take 3, then recycle 2 and [10..19], the end of b's walk.
    t = new_table()
    kv = new_kv(t, 10, 4, 100, enable_block_reuse=True)
    a = _cached_prefix(t, kv)
    b = add_req(t, 2, 35)
    assert kv.find_new_context_block(b)[0].tolist() == toks(30)
    kv.remove_sequence(1, a)
    y = add_req(t, 3, toks(21, 500))
    kv.add_sequence(3, 21, 1, y)
    assert kv.num_cached_blocks == 1  # [0..9] only
    h, c = work(kv)
    assert kv.find_new_context_block(b)[0].tolist() == toks(20)  # walked again from the root
    assert work(kv) == (h, c + 1)  # [0..9] confirmed again; b's hashes are kept


def test_a_walk_that_matched_everything_goes_on_when_tokens_are_appended():
    t = new_table()
    kv = new_kv(t, 10, 40, 100, enable_block_reuse=True)
    _cached_prefix(t, kv, 31)  # [0..9], [10..19], [20..29] cached
    b = add_req(t, 2, 20, max_new=20)
    assert kv.find_new_context_block(b) is None
    for tok in range(20, 29):
        b.add_new_token(tok)
    assert kv.find_new_context_block(b) is None  # a partial third block is not asked about
    b.add_new_token(999)  # the third block completes, differing from the cached one
    assert kv.find_new_context_block(b)[0].tolist() == toks(29) + [999]


def test_a_pause_makes_the_walk_start_over():
    t = new_table()
    kv = new_kv(t, 10, 40, 100, enable_block_reuse=True)
    _cached_prefix(t, kv, 31)
    b = add_req(t, 2, toks(20) + [7] * 10, max_new=20)
    assert kv.find_new_context_block(b)[0].tolist() == toks(20) + [7] * 10
    b.pause(15)  # the prompt is cut to 15 tokens: one full block, cached
    assert kv.find_new_context_block(b) is None


def test_skip_keys_ignore_extra_ids_as_tensorrt_llm_does():
    """A skip key is the tokens through the first new block and the LoRA id: two requests with
    equal tokens share it whatever their extra ids, although the tree walks they take differ."""
    t = new_table()
    kv = new_kv(t, 10, 40, 100, enable_block_reuse=True)
    _cached_prefix(t, kv)
    plain = add_req(t, 2, 35)
    extra = add_req(t, 3, 35, input_token_extra_ids=[5] * 35)  # its walk misses at the root
    other_extra = add_req(t, 4, 35, input_token_extra_ids=[6] * 35)
    assert kv.find_new_context_block(extra)[0].tolist() == toks(10)
    assert kv.find_new_context_block_batch(slots(plain, extra, other_extra)).tolist() == [0, 1, 1]
    lora = add_req(t, 5, 35, lora_task_id=3)
    assert kv.find_new_context_block_batch(slots(plain, lora)).tolist() == [0, 1]


def test_claims_answer_no_key_claimed_or_claimed_before():
    t = new_table()
    kv = new_kv(t, 10, 40, 100, enable_block_reuse=True)
    _cached_prefix(t, kv)
    b, c, d, e = add_req(t, 2, 35), add_req(t, 3, 20), add_req(t, 4, 36), add_req(t, 5, toks(10) + toks(20, 600))
    assert kv.claim_new_context_blocks(slots(b, c)).tolist() == [1, 0]
    assert kv.claim_new_context_blocks(slots(d, e), continue_pass=True).tolist() == [2, 1]
    assert kv.claim_new_context_blocks(slots(d, b)).tolist() == [1, 2]  # a new pass


def test_continuing_a_pass_after_the_tree_changed_is_refused():
    t = new_table()
    kv = new_kv(t, 10, 40, 100, enable_block_reuse=True)
    _cached_prefix(t, kv)
    b = add_req(t, 2, 35)
    kv.find_new_context_block_batch(slots(b))
    x = add_req(t, 3, 41)
    kv.add_sequence(3, 41, 1, x)
    kv.store_context_blocks(x)
    with pytest.raises(ValueError, match="continue_pass=True after"):
        kv.find_new_context_block_batch(slots(b), continue_pass=True)
    assert kv.find_new_context_block_batch(slots(b)).tolist() == [-1]  # a new pass is fine
    t.remove_request(t.add_request(9, [1, 2, 3], 1))  # a request's tokens went away
    with pytest.raises(ValueError, match="continue_pass=True after"):
        kv.claim_new_context_blocks(slots(b), continue_pass=True)


def test_colliding_hashes_change_no_decision():
    """With every chained hash masked to 2 bits, lookups find many candidates with the hash
    asked for; confirming each against its key keeps every answer exact."""
    import gc

    def run():
        t = new_table()
        kv = new_kv(t, 4, 60, 100, enable_block_reuse=True)
        reqs = []
        for rid in range(12):  # families of shared prefixes, diverging at different blocks
            p = toks(4 * (rid % 4)) + toks(30, 100 + rid // 3)
            r = add_req(t, rid, p)
            reqs.append(r)
            if rid % 2 == 0:
                kv.add_sequence(rid, len(p), 1, r)
                kv.store_context_blocks(r)
        ids = kv.find_new_context_block_batch(slots(*reqs)).tolist()
        keys = [kv.find_new_context_block(r) for r in reqs]
        kv.check_invariants()
        return ids, [None if k is None else k[0].tolist() for k in keys], kv.num_cached_blocks

    expected = run()
    gc.collect()
    ts._core._set_block_hash_mask(3)
    try:
        assert run() == expected
    finally:
        gc.collect()
        ts._core._set_block_hash_mask(2**64 - 1)


def test_the_hash_mask_is_refused_while_a_cache_lives():
    t = new_table()
    kv = new_kv(t)
    with pytest.raises(ValueError, match="alive"):
        ts._core._set_block_hash_mask(3)
    del kv
